"""Stage train_transfer_finetune (stage 2 of 2): from the head stage's best
weights, everything unfrozen, five layer groups (stem+layer1, layer2, layer3,
layer4, fc) with LRs geometric from lr / lr_spread to lr (fastai's
``slice(lo, hi)``), lr a tenth of stage 1's by default; one-cycle peaks at
each group's own LR. The best weights by validation accuracy to
models/transfer_finetune.pt."""

from __future__ import annotations

import logging

from dlpipe import runtime, tensor_io
from dlpipe.config import Params
from dlpipe.data.transfer_images import PREPARED_DIR, load_meta
from dlpipe.declare import Stage
from dlpipe.stages._transfer import (CHECKPOINTS, FINETUNE_LR_JSON, FINETUNE_WEIGHTS, HEAD_LR_JSON, HEAD_WEIGHTS,
                                     PREPARED_FILES, finetune_groups, finetune_lr, finetune_model, train_loader,
                                     val_loader)
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
    deps=(PREPARED_DIR, HEAD_WEIGHTS, HEAD_LR_JSON, FINETUNE_LR_JSON),
    outs=(FINETUNE_WEIGHTS, live.plots_dir(LIVE)),
    metrics=(live.metrics_file(LIVE),),
    plot_groups={
        "transfer_loss": live.plot_group({HEAD_LIVE: ["train_loss", "val_loss"], LIVE: ["train_loss", "val_loss"]}),
        "transfer_val_accuracy": live.plot_group({HEAD_LIVE: ["val_accuracy"], LIVE: ["val_accuracy"]})},
    mem_mb=8000, runtime=120,
)


def main(params: Params) -> None:
    device = runtime.setup(params.seed, params.device)
    cfg = params.transfer.finetune.train
    lr = finetune_lr(params)
    meta = load_meta()
    train, val = train_loader(params, cfg, device), val_loader(params, device)
    model = finetune_model(params, len(meta["class_names"]), device)
    groups = finetune_groups(model, lr, params.transfer.finetune.lr_spread)
    group_lrs = [group["lr"] for group in groups]  # the peaks; one-cycle changes the live values
    result = loop.train(
        model, groups, train, val, classification(), cfg, lr, RunFiles(
            name="train_transfer_finetune", checkpoint=CHECKPOINT, identity=run_identity(
                __name__, params, PREPARED_FILES + [HEAD_WEIGHTS], lr=lr),
            live=LIVE), Accel.from_params(params.accel, device),
    )
    tensor_io.save_weights(FINETUNE_WEIGHTS, result.best_state)
    log.info("transfer fine-tuning on %s: best val_accuracy %.4f at epoch %d of %d (group LRs %s)",
             meta["dataset"], result.best_metric, result.best_epoch, result.epochs_run,
             ", ".join(f"{group_lr:.3g}" for group_lr in group_lrs))
