"""Stage train_lenet: the seed's LeNet on the shared training loop.

uint8 images stay on the device, batches are slices of a seeded permutation,
random crops (and flips for photos) on whole batches, normalisation by the
training split's statistics; cross-entropy, SGD with momentum by default,
``lr: auto`` from lr_find_lenet, the best weights by validation accuracy to
models/lenet.pt, a resumable checkpoint each epoch.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dlpipe import runtime, tensor_io
from dlpipe.config import Params
from dlpipe.data.classifier_prepared import META_JSON, PREPARED_DIR, load_meta
from dlpipe.declare import Stage
from dlpipe.stages._lenet import CHECKPOINT, LR_FIND_JSON, WEIGHTS, build_model, eval_loader, train_loader
from dlpipe.training import loop, lr_finder
from dlpipe.training.accel import Accel
from dlpipe.training.checkpoint import run_identity
from dlpipe.training.schedules import build_optimizer, build_scheduler
from dlpipe.training.tasks import classification

log = logging.getLogger(__name__)
HISTORY = Path("reports/plots/lenet/history.csv")


STAGE = Stage(
    params=("seed", "device", "accel", "lenet.model", "lenet.augment", "lenet.train"),
    deps=(PREPARED_DIR, LR_FIND_JSON),
    outs=(WEIGHTS, HISTORY),
    plot_groups={"lenet_loss": {"x": "epoch", "y": {HISTORY.as_posix(): ["train_loss", "val_loss"]}},
                 "lenet_val_accuracy": {"x": "epoch", "y": {HISTORY.as_posix(): "val_accuracy"}}},
    mem_mb=8000, runtime=120,
)


def main(params: Params) -> None:
    device = runtime.setup(params.seed, params.device)
    cfg = params.lenet.train
    lr = lr_finder.resolve_lr(cfg.lr, LR_FIND_JSON, "lenet.train.lr")
    meta = load_meta()
    train, val = train_loader(params.lenet, params.seed, meta, device), eval_loader("val", meta, device)
    model = build_model(params.lenet, params.seed, len(meta["class_names"]), device)
    accel = Accel.from_params(params.accel, device)
    accel.prepare(model)
    optimizer = build_optimizer(model.parameters(), cfg, lr)
    scheduler, per_batch = build_scheduler(optimizer, cfg, len(train))
    result = loop.fit(
        model, train, val, classification(), optimizer, scheduler, per_batch,
        epochs=cfg.epochs, patience=cfg.patience, min_delta=cfg.min_delta,
        checkpoint_path=CHECKPOINT, params_hash=run_identity(
            __name__, params, [PREPARED_DIR / "train.pt", PREPARED_DIR / "val.pt", PREPARED_DIR / META_JSON], lr=lr),
        history_path=HISTORY, name="train_lenet", accel=accel,
    )
    tensor_io.save_weights(WEIGHTS, result.best_state)
    log.info("lenet on %s: best val_accuracy %.4f at epoch %d of %d (lr %.4g)", meta["dataset"],
             result.best_metric, result.best_epoch, result.epochs_run, lr)
