"""Stage lr_find_houses: LR range test of the houses MLP with its training optimizer."""

from __future__ import annotations

import logging

from dlpipe import runtime
from dlpipe.config import Params
from dlpipe.data.houses_prepared import PREPARED_DIR
from dlpipe.declare import Stage
from dlpipe.pictures.lr_plot import plot_lr_find
from dlpipe.stages._houses import LR_FIND_JSON, build_model, loaders
from dlpipe.training import lr_finder
from dlpipe.training.schedules import build_optimizer
from dlpipe.training.tasks import log_price_regression

log = logging.getLogger(__name__)


STAGE = Stage(
    params=("seed", "device", "houses.lr_find", "houses.model",
            # only the training keys the sweep uses: a new epoch count needs no new sweep
            "houses.train.optimizer", "houses.train.batch_size"),
    deps=(PREPARED_DIR,),
    outs=(LR_FIND_JSON, LR_FIND_JSON.with_suffix(".png")),
    plots=(lr_finder.curve_plot(LR_FIND_JSON, "houses"),),
    mem_mb=4000, runtime=30,
)


def main(params: Params) -> None:
    device = runtime.setup(params.seed, params.device)
    train_loader, _ = loaders(params, device)
    model = build_model(params, train_loader, device)
    cfg = params.houses.lr_find
    optimizer = build_optimizer(model.parameters(), params.houses.train, lr=cfg.start_lr)
    record = lr_finder.range_test(model, optimizer, log_price_regression().loss_fn, train_loader, cfg, device)
    lr_finder.save_result(record, LR_FIND_JSON)
    plot_lr_find(record, LR_FIND_JSON.with_suffix(".png"), "houses MLP")
    log.info("houses LR range test: %s -> %.4g", record["rules"], record["suggested_lr"])
