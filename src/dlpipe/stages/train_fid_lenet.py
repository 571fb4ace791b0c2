"""Stage train_fid_lenet: the LeNet whose features measure the DCGAN.

The Fréchet distance and the class metrics of evaluate_dcgan need a feature
network that stays put while other experiments change: this one has its own
params section (``dcgan.feature_net``: its own seed, a fixed LR, no range
test), so no ``lenet.*`` value and not the top-level ``seed`` reach it. It is
trained like train_lenet (the shared loop, the same loaders) on the
classifier's training split only, its best epoch picked on the validation
split; the FID's real pool (val and test) is never trained on. Writes
models/fid_lenet.pt and its per-epoch history.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dlpipe import runtime
from dlpipe.config import Params
from dlpipe.data.classifier_prepared import PREPARED_DIR
from dlpipe.declare import Stage
from dlpipe.stages._lenet import fit
from dlpipe.training import live

log = logging.getLogger(__name__)
WEIGHTS = Path("models/fid_lenet.pt")
CHECKPOINT = Path("checkpoints/fid_lenet/last.pt")
LIVE = live.stage_dir(__name__)


STAGE = Stage(
    params=("device", "dcgan.feature_net"),
    deps=(PREPARED_DIR,),
    outs=(WEIGHTS, live.plots_dir(LIVE)),
    metrics=(live.metrics_file(LIVE),),
    mem_mb=8000, runtime=120,
)


def main(params: Params) -> None:
    net = params.dcgan.feature_net
    device = runtime.setup(net.seed, params.device)
    result, meta = fit(net, net.seed, net.train.lr, device, stage=__name__, params=params, weights=WEIGHTS,
                       checkpoint=CHECKPOINT, live=LIVE)
    log.info("fid lenet on %s: best val_accuracy %.4f at epoch %d of %d", meta["dataset"],
             result.best_metric, result.best_epoch, result.epochs_run)
