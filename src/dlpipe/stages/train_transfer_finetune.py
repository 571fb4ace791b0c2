"""Stage train_transfer_finetune (stage 2 of 2): from the head stage's best
weights, everything unfrozen, five layer groups (stem+layer1, layer2, layer3,
layer4, fc) with LRs geometric from lr / lr_spread to lr (fastai's
``slice(lo, hi)``), lr a tenth of stage 1's by default; one-cycle peaks at
each group's own LR. The best weights by validation accuracy to
models/transfer_finetune.pt. Then the same from the random backbone's head
weights (the baseline) to models/transfer_finetune_random.pt (``_transfer.BACKBONES``)."""

from __future__ import annotations

import logging
from pathlib import Path

from dlpipe import runtime, tensor_io
from dlpipe.config import Params
from dlpipe.data.transfer_images import PREPARED_DIR, load_meta
from dlpipe.declare import Stage
from dlpipe.stages._transfer import (BACKBONES, CHECKPOINTS, FINETUNE_LR_JSON, FINETUNE_WEIGHTS, HEAD_LR_JSON,
                                     HEAD_WEIGHTS, PREPARED_FILES, backbone_path, finetune_groups, finetune_lr,
                                     finetune_model, train_loader, val_loader)
from dlpipe.stages.train_transfer_head import LIVE as HEAD_LIVE
from dlpipe.training import live, loop
from dlpipe.training.accel import Accel
from dlpipe.training.checkpoint import run_identity
from dlpipe.training.state import RunFiles
from dlpipe.training.tasks import classification

log = logging.getLogger(__name__)
LIVE = live.stage_dir(__name__)
CHECKPOINT = CHECKPOINTS / "transfer_finetune" / "last.pt"


STAGE = Stage(
    params=("seed", "device", "accel", "transfer.augment", "transfer.finetune", "transfer.head.train.lr"),
    deps=(PREPARED_DIR,) + tuple(backbone_path(path, b) for b in BACKBONES
                                 for path in (HEAD_WEIGHTS, HEAD_LR_JSON, FINETUNE_LR_JSON)),
    outs=tuple(path for b in BACKBONES for path in (backbone_path(FINETUNE_WEIGHTS, b),
                                                    live.plots_dir(backbone_path(LIVE, b)))),
    metrics=tuple(live.metrics_file(backbone_path(LIVE, b)) for b in BACKBONES),
    plot_groups={
        "transfer_loss": live.plot_group({HEAD_LIVE: ["train_loss", "val_loss"], LIVE: ["train_loss", "val_loss"]}),
        "transfer_val_accuracy": live.plot_group({HEAD_LIVE: ["val_accuracy"], LIVE: ["val_accuracy"]})},
    mem_mb=8000, runtime=240,
)


def main(params: Params) -> None:
    device = runtime.setup(params.seed, params.device)
    cfg = params.transfer.finetune.train
    meta = load_meta()
    for backbone in BACKBONES:
        lr = finetune_lr(params, backbone)
        train, val = train_loader(params, cfg, device), val_loader(params, device)
        model = finetune_model(params, len(meta["class_names"]), device, backbone)
        groups = finetune_groups(model, lr, params.transfer.finetune.lr_spread)
        group_lrs = [group["lr"] for group in groups]  # the peaks; one-cycle changes the live values
        head = backbone_path(HEAD_WEIGHTS, backbone)
        result = loop.train(
            model, groups, train, val, classification(), cfg, lr, RunFiles(
                name=backbone_path(Path("train_transfer_finetune"), backbone).name,
                checkpoint=backbone_path(CHECKPOINT, backbone), identity=run_identity(
                    __name__, params, PREPARED_FILES + [head], lr=lr, backbone=backbone),
                live=backbone_path(LIVE, backbone)), Accel.from_params(params.accel, device),
        )
        tensor_io.save_weights(backbone_path(FINETUNE_WEIGHTS, backbone), result.best_state)
        log.info("transfer fine-tuning on %s (%s backbone): best val_accuracy %.4f at epoch %d of %d "
                 "(group LRs %s)", meta["dataset"], backbone, result.best_metric, result.best_epoch,
                 result.epochs_run, ", ".join(f"{group_lr:.3g}" for group_lr in group_lrs))
