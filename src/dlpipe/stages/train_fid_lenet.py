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

from dlpipe import runtime, tensor_io
from dlpipe.config import Params
from dlpipe.data.classifier_prepared import META_JSON, PREPARED_DIR, load_meta
from dlpipe.declare import Stage
from dlpipe.stages._lenet import build_model, eval_loader, train_loader
from dlpipe.training import loop
from dlpipe.training.checkpoint import run_identity
from dlpipe.training.schedules import build_optimizer, build_scheduler
from dlpipe.training.tasks import classification

log = logging.getLogger(__name__)
WEIGHTS = Path("models/fid_lenet.pt")
CHECKPOINT = Path("checkpoints/fid_lenet/last.pt")
HISTORY = Path("reports/plots/fid_lenet/history.csv")


STAGE = Stage(
    params=("device", "dcgan.feature_net"),
    deps=(PREPARED_DIR,),
    outs=(WEIGHTS, HISTORY),
    mem_mb=8000, runtime=120,
)


def main(params: Params) -> None:
    net = params.dcgan.feature_net
    device = runtime.setup(net.seed, params.device)
    meta = load_meta()
    train, val = train_loader(net, net.seed, meta, device), eval_loader("val", meta, device)
    model = build_model(net, net.seed, len(meta["class_names"]), device)
    optimizer = build_optimizer(model.parameters(), net.train, net.train.lr)
    scheduler, per_batch = build_scheduler(optimizer, net.train, len(train))
    result = loop.fit(
        model, train, val, classification(), optimizer, scheduler, per_batch,
        epochs=net.train.epochs, patience=net.train.patience, min_delta=net.train.min_delta,
        checkpoint_path=CHECKPOINT, params_hash=run_identity(
            __name__, params, [PREPARED_DIR / "train.pt", PREPARED_DIR / "val.pt", PREPARED_DIR / META_JSON]),
        history_path=HISTORY, name="train_fid_lenet",
    )
    tensor_io.save_weights(WEIGHTS, result.best_state)
    log.info("fid lenet on %s: best val_accuracy %.4f at epoch %d of %d", meta["dataset"],
             result.best_metric, result.best_epoch, result.epochs_run)
