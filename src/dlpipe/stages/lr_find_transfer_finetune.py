"""Stage lr_find_transfer_finetune: LR range test of the whole network from the
head stage's best weights, with stage 2's layer groups: the swept LR is the
fc's, every other group runs at its fixed share of it (lr / spread .. lr); once
per backbone (``_transfer.BACKBONES``), each from its own head weights."""

from __future__ import annotations

import logging

from dlpipe import runtime
from dlpipe.config import Params
from dlpipe.data.transfer_images import PREPARED_DIR, load_meta
from dlpipe.declare import Stage
from dlpipe.models.resnet import group_lrs
from dlpipe.pictures.lr_plot import plot_lr_find
from dlpipe.stages._transfer import (BACKBONES, FINETUNE_LR_JSON, HEAD_WEIGHTS, backbone_path, finetune_groups,
                                     finetune_model, train_loader)
from dlpipe.training import lr_finder
from dlpipe.training.schedules import build_optimizer
from dlpipe.training.tasks import classification

log = logging.getLogger(__name__)


STAGE = Stage(
    params=("seed", "device", "transfer.finetune.lr_find", "transfer.augment", "transfer.finetune.lr_spread",
            "transfer.finetune.train.optimizer", "transfer.finetune.train.batch_size"),
    deps=(PREPARED_DIR,) + tuple(backbone_path(HEAD_WEIGHTS, b) for b in BACKBONES),
    outs=tuple(path for b in BACKBONES for path in (backbone_path(FINETUNE_LR_JSON, b),
                                                    backbone_path(FINETUNE_LR_JSON, b).with_suffix(".png"))),
    plots=tuple(lr_finder.curve_plot(backbone_path(FINETUNE_LR_JSON, b), f"transfer fine-tuning ({b} backbone)",
                                     "learning rate of fc (log scale; the other groups at their fixed shares)")
                for b in BACKBONES),
    mem_mb=8000, runtime=60,
)


def main(params: Params) -> None:
    device = runtime.setup(params.seed, params.device)
    meta = load_meta()
    cfg, sweep = params.transfer.finetune.train, params.transfer.finetune.lr_find
    spread = params.transfer.finetune.lr_spread
    for backbone in BACKBONES:
        loader = train_loader(params, cfg, device, capped=False)  # a fresh one: the same batches for both
        model = finetune_model(params, len(meta["class_names"]), device, backbone)
        optimizer = build_optimizer(finetune_groups(model, sweep.start_lr, spread), cfg, sweep.start_lr)
        record = lr_finder.range_test(model, optimizer, classification().loss_fn, loader, sweep, device,
                                      lr_ratios=group_lrs(1.0, spread))
        path = backbone_path(FINETUNE_LR_JSON, backbone)
        lr_finder.save_result(record, path)
        plot_lr_find(record, path.with_suffix(".png"),
                     f"ResNet18 fine-tuning (fc LR, {backbone} backbone) on {meta['dataset']}")
        log.info("transfer fine-tuning LR range test (%s backbone; fc LR; groups x %s): %s -> %.4g", backbone,
                 [round(r, 4) for r in record["lr_ratios"]], record["rules"], record["suggested_lr"])
