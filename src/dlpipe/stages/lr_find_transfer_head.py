"""Stage lr_find_transfer_head: LR range test of the new fc on the frozen
backbone (BatchNorm in eval mode), with stage 1's optimizer, on augmented
training batches; once per backbone (``_transfer.BACKBONES``: the chosen
weights, then a random one)."""

from __future__ import annotations

import logging

from dlpipe import runtime
from dlpipe.config import Params
from dlpipe.data.transfer_images import PREPARED_DIR, load_meta
from dlpipe.declare import Stage
from dlpipe.pictures.lr_plot import plot_lr_find
from dlpipe.stages._transfer import BACKBONE, BACKBONES, HEAD_LR_JSON, backbone_path, head_model, train_loader
from dlpipe.training import lr_finder
from dlpipe.training.schedules import build_optimizer
from dlpipe.training.tasks import classification

log = logging.getLogger(__name__)


STAGE = Stage(
    params=("seed", "device", "transfer.head.lr_find", "transfer.model", "transfer.augment",
            "transfer.head.train.optimizer", "transfer.head.train.batch_size"),
    deps=(PREPARED_DIR, BACKBONE),
    outs=tuple(path for b in BACKBONES for path in (backbone_path(HEAD_LR_JSON, b),
                                                    backbone_path(HEAD_LR_JSON, b).with_suffix(".png"))),
    plots=tuple(lr_finder.curve_plot(backbone_path(HEAD_LR_JSON, b), f"transfer head ({b} backbone)")
                for b in BACKBONES),
    mem_mb=8000, runtime=60,
)


def main(params: Params) -> None:
    device = runtime.setup(params.seed, params.device)
    meta = load_meta()
    cfg = params.transfer.head.train
    for backbone in BACKBONES:
        loader = train_loader(params, cfg, device, capped=False)  # a fresh one: the same batches for both
        model, source = head_model(params, len(meta["class_names"]), device, backbone)
        optimizer = build_optimizer(model.fc.parameters(), cfg, lr=params.transfer.head.lr_find.start_lr)
        record = lr_finder.range_test(model, optimizer, classification().loss_fn, loader,
                                      params.transfer.head.lr_find, device)
        path = backbone_path(HEAD_LR_JSON, backbone)
        lr_finder.save_result(record, path)
        plot_lr_find(record, path.with_suffix(".png"), f"ResNet18 head ({backbone} backbone) on {meta['dataset']}")
        log.info("transfer head LR range test (backbone: %s): %s -> %.4g", source, record["rules"],
                 record["suggested_lr"])
