"""Stage train_lenet: the CIFAR-10 tutorial's LeNet on the shared training loop.

uint8 images stay on the device, batches are slices of a seeded permutation,
random crops (and flips for photos) on whole batches, normalisation by the
training split's statistics; cross-entropy, SGD with momentum by default,
``lr: auto`` from lr_find_lenet, the best weights by validation accuracy to
models/lenet.pt, a resumable checkpoint each epoch.
"""

from __future__ import annotations

import logging

from dlpipe import runtime
from dlpipe.config import Params
from dlpipe.data.classifier_prepared import PREPARED_DIR
from dlpipe.declare import Stage
from dlpipe.stages._lenet import CHECKPOINT, LR_FIND_JSON, WEIGHTS, fit
from dlpipe.training import live, lr_finder
from dlpipe.training.accel import Accel

log = logging.getLogger(__name__)
LIVE = live.stage_dir(__name__)


STAGE = Stage(
    params=("seed", "device", "accel", "lenet.model", "lenet.augment", "lenet.train"),
    deps=(PREPARED_DIR, LR_FIND_JSON),
    outs=(WEIGHTS, live.plots_dir(LIVE)),
    metrics=(live.metrics_file(LIVE),),
    plot_groups={"lenet_loss": live.plot_group({LIVE: ["train_loss", "val_loss"]}),
                 "lenet_val_accuracy": live.plot_group({LIVE: ["val_accuracy"]})},
    mem_mb=8000, runtime=120,
)


def main(params: Params) -> None:
    device = runtime.setup(params.seed, params.device)
    cfg = params.lenet.train
    lr = lr_finder.resolve_lr(cfg.lr, LR_FIND_JSON, "lenet.train.lr")
    result, meta = fit(params.lenet, params.seed, lr, device, stage=__name__, params=params, weights=WEIGHTS,
                       checkpoint=CHECKPOINT, live=LIVE, accel=Accel.from_params(params.accel, device))
    log.info("lenet on %s: best val_accuracy %.4f at epoch %d of %d (lr %.4g)", meta["dataset"],
             result.best_metric, result.best_epoch, result.epochs_run, lr)
