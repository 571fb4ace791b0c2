"""Stage lr_find_transfer_finetune: LR range test of the whole network from the
head stage's best weights, with stage 2's layer groups: the swept LR is the
fc's, every other group runs at its fixed share of it (lr / spread .. lr)."""

from __future__ import annotations

import logging

from dlpipe import runtime
from dlpipe.config import Params
from dlpipe.data.transfer_images import PREPARED_DIR, load_meta
from dlpipe.declare import Stage
from dlpipe.models.resnet import group_lrs
from dlpipe.pictures.lr_plot import plot_lr_find
from dlpipe.stages._transfer import FINETUNE_LR_JSON, HEAD_WEIGHTS, finetune_groups, finetune_model, train_loader
from dlpipe.training import lr_finder
from dlpipe.training.schedules import build_optimizer
from dlpipe.training.tasks import classification

log = logging.getLogger(__name__)


STAGE = Stage(
    params=("seed", "device", "transfer.finetune.lr_find", "transfer.augment", "transfer.finetune.lr_spread",
            "transfer.finetune.train.optimizer", "transfer.finetune.train.batch_size"),
    deps=(PREPARED_DIR, HEAD_WEIGHTS),
    outs=(FINETUNE_LR_JSON, FINETUNE_LR_JSON.with_suffix(".png")),
    plots=(lr_finder.curve_plot(FINETUNE_LR_JSON, "transfer fine-tuning",
                                  "learning rate of fc (log scale; the other groups at their fixed shares)"),),
    mem_mb=8000, runtime=30,
)


def main(params: Params) -> None:
    device = runtime.setup(params.seed, params.device)
    meta = load_meta()
    cfg, sweep = params.transfer.finetune.train, params.transfer.finetune.lr_find
    loader = train_loader(params, cfg, device, capped=False)
    model = finetune_model(params, len(meta["class_names"]), device)
    spread = params.transfer.finetune.lr_spread
    optimizer = build_optimizer(finetune_groups(model, sweep.start_lr, spread), cfg, sweep.start_lr)
    record = lr_finder.range_test(model, optimizer, classification().loss_fn, loader, sweep, device,
                                  lr_ratios=group_lrs(1.0, spread))
    lr_finder.save_result(record, FINETUNE_LR_JSON)
    plot_lr_find(record, FINETUNE_LR_JSON.with_suffix(".png"), f"ResNet18 fine-tuning (fc LR) on {meta['dataset']}")
    log.info("transfer fine-tuning LR range test (fc LR; groups x %s): %s -> %.4g",
             [round(r, 4) for r in record["lr_ratios"]], record["rules"], record["suggested_lr"])
