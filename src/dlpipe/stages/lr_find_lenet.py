"""Stage lr_find_lenet: LR range test of LeNet with its training optimizer, on
augmented training batches."""

from __future__ import annotations

import logging

from dlpipe import runtime
from dlpipe.config import Params
from dlpipe.data.classifier_prepared import PREPARED_DIR, load_meta
from dlpipe.declare import Stage
from dlpipe.pictures.lr_plot import plot_lr_find
from dlpipe.stages._lenet import LR_FIND_JSON, build_model, train_loader
from dlpipe.training import lr_finder
from dlpipe.training.schedules import build_optimizer
from dlpipe.training.tasks import classification

log = logging.getLogger(__name__)


STAGE = Stage(
    params=("seed", "device", "lenet.lr_find", "lenet.model", "lenet.augment",
            "lenet.train.optimizer", "lenet.train.batch_size"),
    deps=(PREPARED_DIR,),
    outs=(LR_FIND_JSON, LR_FIND_JSON.with_suffix(".png")),
    plots=(lr_finder.curve_plot(LR_FIND_JSON, "lenet"),),
    mem_mb=4000, runtime=30,
)


def main(params: Params) -> None:
    device = runtime.setup(params.seed, params.device)
    meta = load_meta()
    loader = train_loader(params.lenet, params.seed, meta, device, capped=False)
    model = build_model(params.lenet, params.seed, len(meta["class_names"]), device)
    cfg = params.lenet.train
    optimizer = build_optimizer(model.parameters(), cfg, lr=params.lenet.lr_find.start_lr)
    record = lr_finder.range_test(model, optimizer, classification().loss_fn, loader, params.lenet.lr_find, device)
    lr_finder.save_result(record, LR_FIND_JSON)
    plot_lr_find(record, LR_FIND_JSON.with_suffix(".png"), f"LeNet on {meta['dataset']}")
    log.info("LeNet LR range test: %s -> %.4g", record["rules"], record["suggested_lr"])
