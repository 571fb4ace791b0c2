"""Stage train_houses: the house-price MLP on the shared training loop.

RMSLE loss in log space, Adam by default, ``lr: auto`` from lr_find_houses,
early stopping on validation RMSLE, best (not last) weights to models/houses.pt.
"""

from __future__ import annotations

import logging

from dlpipe import runtime, tensor_io
from dlpipe.config import Params
from dlpipe.data.houses_prepared import PREPARED_DIR
from dlpipe.declare import Stage
from dlpipe.stages._houses import CHECKPOINT, LR_FIND_JSON, WEIGHTS, build_model, loaders
from dlpipe.training import live, loop, lr_finder
from dlpipe.training.checkpoint import run_identity
from dlpipe.training.state import RunFiles
from dlpipe.training.tasks import log_price_regression

log = logging.getLogger(__name__)
LIVE = live.stage_dir(__name__)


STAGE = Stage(
    params=("seed", "device", "houses.model", "houses.train"),
    deps=(PREPARED_DIR, LR_FIND_JSON),
    # checkpoints/houses/ (the resumable state) is deliberately not an out: docs/architecture.md
    outs=(WEIGHTS, live.plots_dir(LIVE)),
    metrics=(live.metrics_file(LIVE),),
    plot_groups={"houses_training": live.plot_group({LIVE: ["train_loss", "val_rmsle"]})},
    mem_mb=8000, runtime=120,
)


def main(params: Params) -> None:
    device = runtime.setup(params.seed, params.device)
    cfg = params.houses.train
    lr = lr_finder.resolve_lr(cfg.lr, LR_FIND_JSON, "houses.train.lr")
    train_loader, val_loader = loaders(params, device)
    model = build_model(params, train_loader, device)
    result = loop.train(
        model, model.parameters(), train_loader, val_loader, log_price_regression(), cfg, lr, RunFiles(
            name="train_houses", checkpoint=CHECKPOINT, identity=run_identity(
                __name__, params, [PREPARED_DIR / "train.pt", PREPARED_DIR / "val.pt"], lr=lr),
            live=LIVE),
    )
    tensor_io.save_weights(WEIGHTS, result.best_state)
    log.info("houses: best val_rmsle %.5f at epoch %d of %d (lr %.4g)", result.best_metric,
             result.best_epoch, result.epochs_run, lr)
