"""Stage evaluate_houses: validation RMSLE of the best weights, the cross-validation's
figures, the Kaggle submission (validated before it is written) and the predicted-vs-true table.

The single split's model (train_houses) gives ``val_rmsle`` and the
predicted-vs-true table; the submission is cv_houses' bag of fold models, whose
``cv_rmsle`` and fold figures come with it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dlpipe import runtime
from dlpipe.config import Params
from dlpipe.data.houses_prepared import PREPARED_DIR, load_split
from dlpipe.declare import Stage
from dlpipe.layouts import CsvFile, metrics_files
from dlpipe.errors import PipelineError
from dlpipe.io import write_metrics
from dlpipe.models.mlp import HouseMLP
from dlpipe.stages._houses import CV_PREDICTIONS, CV_PREDICTIONS_FILE, CV_RECORD, CV_RECORD_FILE, WEIGHTS, empty_model
from dlpipe.tensor_io import load_into

log = logging.getLogger(__name__)
SUBMISSION = Path("reports/submission.csv")
METRICS = Path("reports/metrics/houses.json")  # HEADLINE only; every number in DETAILS
DETAILS = Path("reports/details/houses.json")
METRICS_FILE, DETAILS_FILE = metrics_files("evaluate_houses", METRICS, DETAILS)
HEADLINE = ("val_rmsle", "cv_rmsle")
VAL_PREDICTIONS = Path("reports/plots/houses/val_predictions.csv")
SUBMISSION_FILE = CsvFile("evaluate_houses", SUBMISSION.as_posix(), {"Id": "number", "SalePrice": "number"})
VAL_PREDICTIONS_FILE = CsvFile("evaluate_houses", VAL_PREDICTIONS.as_posix(), {
    "Id": "number", "true_price": "number", "predicted_price": "number", "outlier": "text", "residual_log": "number"})


STAGE = Stage(
    params=("device", "houses.model"),
    deps=(WEIGHTS, PREPARED_DIR, CV_RECORD, CV_PREDICTIONS),
    outs=(SUBMISSION, DETAILS),
    metrics=(METRICS,),
    plots=((VAL_PREDICTIONS, {"x": "true_price", "y": "predicted_price", "template": "scatter"}),),
)


def rmsle(log_pred: np.ndarray, log_true: np.ndarray) -> float:
    return float(np.sqrt(np.mean((log_pred - log_true) ** 2)))


def check_submission(frame: pd.DataFrame, expected_ids: np.ndarray) -> None:
    """Kaggle's format: Id,SalePrice; exactly the test Ids in order; positive finite prices."""
    if list(frame.columns) != ["Id", "SalePrice"]:
        raise PipelineError(f"submission columns are {list(frame.columns)}, expected ['Id', 'SalePrice']")
    if not np.array_equal(frame["Id"].to_numpy(), expected_ids):
        raise PipelineError("submission Ids differ from the test set's Ids")
    prices = frame["SalePrice"].to_numpy()
    bad = frame.loc[~(np.isfinite(prices) & (prices > 0)), "Id"].tolist()
    if bad:
        raise PipelineError(f"submission has non-positive or non-finite prices for Ids {bad[:5]}")


@torch.inference_mode()
def predict_log_price(model: HouseMLP, x: torch.Tensor) -> np.ndarray:
    model.eval()
    return model(x).double().cpu().numpy()


def main(params: Params) -> None:
    device = runtime.setup(0, params.device)
    val, test = load_split("val", device), load_split("test")
    model = empty_model(params, val["x"].shape[1]).to(device)
    load_into(model, WEIGHTS)

    val_log_pred = predict_log_price(model, val["x"])
    val_log_true = val["y"].double().cpu().numpy()
    outlier = val["outlier"].cpu().numpy()
    metrics = {
        "val_rmsle": rmsle(val_log_pred, val_log_true),
        "val_rmsle_without_outliers": rmsle(val_log_pred[~outlier], val_log_true[~outlier]),
        "val_rows": int(len(val_log_true)),
        "val_outlier_rows": int(outlier.sum()),
    }

    metrics.update(CV_RECORD_FILE.read(CV_RECORD))
    bagged = CV_PREDICTIONS_FILE.load(CV_PREDICTIONS, N=len(test["id"]))
    prices = np.expm1(bagged["log_price"].double().numpy())
    submission = pd.DataFrame({"Id": bagged["id"].numpy(), "SalePrice": prices})
    check_submission(submission, test["id"].numpy())
    SUBMISSION_FILE.write(SUBMISSION, submission)

    table = pd.DataFrame({
        "Id": val["id"].cpu().numpy(), "true_price": np.expm1(val_log_true),
        "predicted_price": np.expm1(val_log_pred), "outlier": outlier,
    })
    table["residual_log"] = val_log_pred - val_log_true
    VAL_PREDICTIONS_FILE.write(VAL_PREDICTIONS, table)
    write_metrics(METRICS_FILE, DETAILS_FILE, metrics, HEADLINE)
    log.info("houses metrics: %s; submission: %d rows", metrics, len(submission))
