"""Stage cv_houses: K-fold cross-validation of the houses MLP, the epoch count it
chooses and the bagged test predictions.

Each fold (prepare_houses' ``cv_fold<i>.pt``: its own feature pipeline, fitted
on its fitting rows) trains ``houses.cv.n_seeds`` models of ``houses.model``
for ``houses.cv.epochs`` epochs each, with train_houses' LR, optimizer, LR
schedule and batch size, and no early stopping. After every epoch each model
predicts its fold's held-out rows and the test rows.

The rule, in log-price space: a fold's validation RMSLE at an epoch is that of
the mean of its seeds' predictions, over all its held-out rows (outliers
included); the validation curve is its mean over the folds, per epoch; the
chosen epoch is the curve's minimum (the earliest, on a tie), and ``cv_rmsle``
the curve there. The submission's log-prices are the mean, at the chosen epoch,
of the test predictions of every fold model (folds x seeds): a bag of models
each fitted on (k-1)/k of the rows, so no refit on all rows is needed. The
same number picked and reported on the same folds is slightly optimistic; over
a flat curve's minimum (docs/results.md) by little.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dlpipe import runtime
from dlpipe.config import Params
from dlpipe.data.houses_prepared import PREPARED_DIR, load_split, load_summary
from dlpipe.data.loaders import TensorLoader
from dlpipe.declare import Stage
from dlpipe.io import write_text
from dlpipe.stages._houses import (CV_CURVE, CV_CURVE_FILE, CV_PREDICTIONS, CV_PREDICTIONS_FILE, CV_RECORD, CV_RECORD_FILE,
                                   LR_FIND_JSON, build_model)
from dlpipe.training import loop, lr_finder
from dlpipe.training.tasks import log_price_regression

log = logging.getLogger(__name__)
CURVE = CV_CURVE


STAGE = Stage(
    params=("seed", "device", "houses.model", "houses.cv",
            # the training keys the fold models use: not train_houses' epochs and stopping rule
            "houses.train.lr", "houses.train.optimizer", "houses.train.schedule", "houses.train.batch_size"),
    deps=(PREPARED_DIR, LR_FIND_JSON),
    outs=(CV_RECORD, CV_PREDICTIONS),
    plots=((CURVE, {"template": "epoch_choice", "x": "epoch", "y": "cv_rmsle", "x_label": "epoch",
                    "y_label": "validation RMSLE, mean over the folds",
                    "title": "houses: cross-validation curve, dashed: the chosen epoch"}),),
    mem_mb=4000, runtime=30,
)


def seeds(seed: int, n_seeds: int) -> list[int]:
    """One seed per model of a fold (its initial weights and batch order), drawn from ``seed``:
    consecutive integers would give one model's batch orders (seed + epoch) to the next."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n_seeds)]


def rmsle(log_pred: np.ndarray, log_true: np.ndarray) -> np.ndarray:
    """RMSLE over the last axis (predictions and truth in log1p space)."""
    return np.sqrt(np.mean((log_pred - log_true) ** 2, axis=-1))


@torch.inference_mode()
def predict(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    return model(x).double().cpu().numpy()


def fold_predictions(params: Params, fold: dict[str, torch.Tensor], seed: int, lr: float,
                     device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """One fold model's log-price predictions after every epoch: (epochs x held-out rows,
    epochs x test rows)."""
    cfg = dataclasses.replace(params.houses.train, epochs=params.houses.cv.epochs)  # a schedule's span
    loader = TensorLoader(fold["fit_x"], fold["fit_y"], cfg.batch_size, shuffle=True, seed=seed,
                          max_batches=cfg.max_batches)
    model = build_model(params, loader, device, seed)
    steps = loop.optimization(model.parameters(), cfg, lr, len(loader))
    val, test = [], []
    for _ in loop.train_epochs(model, loader, log_price_regression().loss_fn, steps, cfg.epochs):
        val.append(predict(model, fold["val_x"]))
        test.append(predict(model, fold["test_x"]))
    return np.stack(val), np.stack(test)


def cross_validate(params: Params, folds: list[dict[str, torch.Tensor]], lr: float, device: torch.device) -> dict:
    """The curve, the chosen epoch, the per-fold RMSLEs there and the bagged test log-prices."""
    model_seeds = seeds(params.seed, params.houses.cv.n_seeds)
    curves, at_epoch, test_sum = [], [], 0.0
    for index, fold in enumerate(folds):
        runs = [fold_predictions(params, fold, seed, lr, device) for seed in model_seeds]
        val_pred = np.mean([val for val, _ in runs], axis=0)  # epochs x held-out rows
        test_sum = test_sum + np.sum([test for _, test in runs], axis=0)
        truth = fold["val_y"].double().cpu().numpy()
        curves.append(rmsle(val_pred, truth))
        at_epoch.append((val_pred, truth, fold["val_outlier"].cpu().numpy()))
        log.info("cv_houses fold %d/%d: lowest validation RMSLE %.5f at epoch %d", index + 1, len(folds),
                 curves[-1].min(), curves[-1].argmin() + 1)
    curves = np.stack(curves)  # folds x epochs
    curve = curves.mean(axis=0)
    chosen = int(np.argmin(curve))  # the first of equal minima
    fold_rmsle = curves[:, chosen]
    without = [float(rmsle(pred[chosen][~out], truth[~out])) for pred, truth, out in at_epoch]
    record = {
        "cv_rmsle": float(curve[chosen]),
        "cv_rmsle_sd": float(fold_rmsle.std(ddof=1)),  # sample sd over the folds
        "cv_fold_rmsle": [float(v) for v in fold_rmsle],
        "cv_rmsle_without_outliers": float(np.mean(without)),
        "cv_fold_rmsle_without_outliers": without,
        "cv_epoch": chosen + 1,
        "cv_epochs_run": int(curves.shape[1]),
        "cv_rmsle_last_epoch": float(curve[-1]),
        "cv_folds": len(folds),
        "cv_seeds": len(model_seeds),
        "cv_held_out_rows": [int(len(truth)) for _, truth, _ in at_epoch],
        "cv_held_out_outlier_rows": [int(out.sum()) for _, _, out in at_epoch],
        "cv_lr": lr,
    }
    return {"record": record, "curves": curves, "test_log_price": test_sum[chosen] / (len(folds) * len(model_seeds))}


def curve_csv(curves: np.ndarray, chosen_epoch: int) -> str:
    """epoch, the mean curve, the chosen epoch (on every row: the plot's marker) and each fold's curve."""
    table = pd.DataFrame({"epoch": np.arange(1, curves.shape[1] + 1), "cv_rmsle": curves.mean(axis=0),
                          "chosen_epoch": chosen_epoch,
                          **{f"fold_{i + 1}": curve for i, curve in enumerate(curves)}})
    return CV_CURVE_FILE.check(CURVE, table).to_csv(index=False, float_format="%.6f")


def main(params: Params) -> None:
    device = runtime.setup(params.seed, params.device)
    lr = lr_finder.resolve_lr(params.houses.train.lr, LR_FIND_JSON, "houses.train.lr")
    test_ids = load_split("test")["id"]
    folds = [load_split(f"cv_fold{i}", device) for i in range(prepared_folds())]
    result = cross_validate(params, folds, lr, device)
    record = result["record"]
    CV_PREDICTIONS_FILE.save(CV_PREDICTIONS, {"id": test_ids, "log_price": torch.from_numpy(result["test_log_price"])})
    write_text(CURVE, curve_csv(result["curves"], record["cv_epoch"]))
    CV_RECORD_FILE.write(CV_RECORD, record)
    log.info("houses cross-validation: cv_rmsle %.5f (sd %.5f over %d folds) at epoch %d of %d; %d models bagged",
             record["cv_rmsle"], record["cv_rmsle_sd"], record["cv_folds"], record["cv_epoch"],
             record["cv_epochs_run"], record["cv_folds"] * record["cv_seeds"])


def prepared_folds(folder: Path = PREPARED_DIR) -> int:
    """How many folds prepare_houses wrote (its ``houses.prepare.cv_folds``, as its summary records)."""
    return load_summary(folder)["cv"]["folds"]
