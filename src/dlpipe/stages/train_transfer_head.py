"""Stage train_transfer_head (stage 1 of 2): the backbone from
``transfer.model.weights`` frozen (no gradients; its BatchNorm layers stay in
eval mode under model.train()), a new fc for the dataset's classes, the
optimizer over the fc only, one-cycle by default; the best weights by
validation accuracy to models/transfer_head.pt."""

from __future__ import annotations

import logging

from dlpipe import runtime, tensor_io
from dlpipe.config import Params
from dlpipe.data.transfer_images import PREPARED_DIR, load_meta
from dlpipe.declare import Stage
from dlpipe.stages._transfer import (BACKBONE, CHECKPOINTS, HEAD_LR_JSON, HEAD_WEIGHTS, PREPARED_FILES, head_lr,
                                     head_model, train_loader, val_loader, weights_files)
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
    deps=(PREPARED_DIR, BACKBONE, HEAD_LR_JSON),
    outs=(HEAD_WEIGHTS, live.plots_dir(LIVE)),
    metrics=(live.metrics_file(LIVE),),
    mem_mb=8000, runtime=120,
)


def main(params: Params) -> None:
    device = runtime.setup(params.seed, params.device)
    cfg = params.transfer.head.train
    lr = head_lr(params)
    meta = load_meta()
    train, val = train_loader(params, cfg, device), val_loader(params, device)
    model, source = head_model(params, len(meta["class_names"]), device)
    result = loop.train(
        model, model.fc.parameters(), train, val, classification(), cfg, lr, RunFiles(
            name="train_transfer_head", checkpoint=CHECKPOINT, identity=run_identity(
                __name__, params, PREPARED_FILES + weights_files(params), lr=lr),
            live=LIVE), Accel.from_params(params.accel, device),
    )
    tensor_io.save_weights(HEAD_WEIGHTS, result.best_state)
    log.info("transfer head on %s (backbone: %s): best val_accuracy %.4f at epoch %d of %d (lr %.4g)",
             meta["dataset"], source, result.best_metric, result.best_epoch, result.epochs_run, lr)
