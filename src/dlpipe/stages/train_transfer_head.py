"""Stage train_transfer_head (stage 1 of 2): the backbone from
``transfer.model.weights`` frozen (no gradients; its BatchNorm layers stay in
eval mode under model.train()), a new fc for the dataset's classes, the
optimizer over the fc only, one-cycle by default; the best weights by
validation accuracy to models/transfer_head.pt. Then the same with a random
backbone (``weights: none``, the baseline) to models/transfer_head_random.pt:
same seed, fc start, batches and budget (``_transfer.BACKBONES``)."""

from __future__ import annotations

import logging
from pathlib import Path

from dlpipe import runtime, tensor_io
from dlpipe.config import Params
from dlpipe.data.transfer_images import PREPARED_DIR, load_meta
from dlpipe.declare import Stage
from dlpipe.stages._transfer import (BACKBONE, BACKBONES, CHECKPOINTS, HEAD_LR_JSON, HEAD_WEIGHTS, PREPARED_FILES,
                                     backbone_path, head_lr, head_model, train_loader, val_loader, weights_files)
from dlpipe.training import live, loop
from dlpipe.training.accel import Accel
from dlpipe.training.checkpoint import run_identity
from dlpipe.training.state import RunFiles
from dlpipe.training.tasks import classification

log = logging.getLogger(__name__)
LIVE = live.stage_dir(__name__)
CHECKPOINT = CHECKPOINTS / "transfer_head" / "last.pt"


STAGE = Stage(
    params=("seed", "device", "accel", "transfer.model", "transfer.augment", "transfer.head.train"),
    deps=(PREPARED_DIR, BACKBONE) + tuple(backbone_path(HEAD_LR_JSON, b) for b in BACKBONES),
    outs=tuple(path for b in BACKBONES for path in (backbone_path(HEAD_WEIGHTS, b),
                                                    live.plots_dir(backbone_path(LIVE, b)))),
    metrics=tuple(live.metrics_file(backbone_path(LIVE, b)) for b in BACKBONES),
    mem_mb=8000, runtime=240,
)


def main(params: Params) -> None:
    device = runtime.setup(params.seed, params.device)
    cfg = params.transfer.head.train
    meta = load_meta()
    for backbone in BACKBONES:
        lr = head_lr(params, backbone)
        train, val = train_loader(params, cfg, device), val_loader(params, device)
        model, source = head_model(params, len(meta["class_names"]), device, backbone)
        result = loop.train(
            model, model.fc.parameters(), train, val, classification(), cfg, lr, RunFiles(
                name=backbone_path(Path("train_transfer_head"), backbone).name,
                checkpoint=backbone_path(CHECKPOINT, backbone), identity=run_identity(
                    __name__, params, PREPARED_FILES + weights_files(params, backbone), lr=lr, backbone=backbone),
                live=backbone_path(LIVE, backbone)), Accel.from_params(params.accel, device),
        )
        tensor_io.save_weights(backbone_path(HEAD_WEIGHTS, backbone), result.best_state)
        log.info("transfer head on %s (backbone: %s): best val_accuracy %.4f at epoch %d of %d (lr %.4g)",
                 meta["dataset"], source, result.best_metric, result.best_epoch, result.epochs_run, lr)
