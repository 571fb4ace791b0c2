"""Stage pretrain_transfer_backbone: a ResNet18 trained from scratch on the
classifier slot's data (digits by default), saved as models/transfer_backbone.pt.

With ``transfer.model.weights: pipeline`` the transfer stages start from it, so
the two-stage transfer is a real transfer on a machine that cannot download
ImageNet weights. Same transforms as the transfer stages (random resized crops
at ``transfer.pretrain.image_size``, ImageNet normalisation), never flipped: a
mirrored digit is another glyph.
"""

from __future__ import annotations

import logging

import torch

from dlpipe import runtime, tensor_io
from dlpipe.config import Params
from dlpipe.data.classifier_prepared import META_JSON, PREPARED_DIR, load_meta, load_split
from dlpipe.declare import Stage
from dlpipe.stages._transfer import BACKBONE, CHECKPOINTS, augmenting_loader, build_model, eval_loader
from dlpipe.training import live, loop
from dlpipe.training.accel import Accel
from dlpipe.training.checkpoint import run_identity
from dlpipe.training.state import RunFiles
from dlpipe.training.tasks import classification

log = logging.getLogger(__name__)
LIVE = live.stage_dir(__name__)
CHECKPOINT = CHECKPOINTS / "transfer_backbone" / "last.pt"


STAGE = Stage(
    params=("seed", "device", "accel", "transfer.pretrain", "transfer.augment.crop_ratio"),
    deps=(PREPARED_DIR,),
    outs=(BACKBONE, live.plots_dir(LIVE)),
    metrics=(live.metrics_file(LIVE),),
    plot_groups={"transfer_backbone_pretraining": live.plot_group({LIVE: ["train_loss", "val_loss", "val_accuracy"]})},
    mem_mb=8000, runtime=60,
)


def main(params: Params) -> None:
    device = runtime.setup(params.seed, params.device)
    cfg = params.transfer.pretrain
    meta = load_meta()
    train, val = load_split("train", device), load_split("val", device)
    size = cfg.image_size
    train_batches = augmenting_loader(train["images"], _sizes(train), train["labels"], params, cfg.train, size,
                                      "transfer.pretrain.crop_scale", cfg.crop_scale, flip=False, capped=True)
    # Validation sees each whole image resized (crop fraction 1): a centre crop could cut strokes off.
    val_batches = eval_loader(val["images"], _sizes(val), val["labels"], size, 1.0)
    model = build_model(params, len(meta["class_names"]), device)
    result = loop.train(
        model, model.parameters(), train_batches, val_batches, classification(), cfg.train, cfg.train.lr, RunFiles(
            name="pretrain_transfer_backbone", checkpoint=CHECKPOINT, identity=run_identity(
                __name__, params, [PREPARED_DIR / "train.pt", PREPARED_DIR / "val.pt", PREPARED_DIR / META_JSON]),
            live=LIVE), Accel.from_params(params.accel, device),
    )
    tensor_io.save_weights(BACKBONE, result.best_state)
    log.info("transfer backbone on %s: best val_accuracy %.4f at epoch %d of %d", meta["dataset"],
             result.best_metric, result.best_epoch, result.epochs_run)


def _sizes(split: dict) -> torch.Tensor:
    """Every classifier image has the same size (CIFAR layout)."""
    images = split["images"]
    return torch.tensor(images.shape[2:], dtype=torch.int64).expand(len(images), 2)
