"""What the houses training stages share: loaders over the prepared tensors and the model."""

from __future__ import annotations

from pathlib import Path

import torch

from dlpipe.config import Params
from dlpipe.data.houses_prepared import load_split
from dlpipe.data.loaders import TensorLoader
from dlpipe.layouts import COUNT, FLOAT, CsvFile, JsonFile, Tensor, TensorFile, array, record
from dlpipe.models.mlp import HouseMLP

LR_FIND_JSON = Path("reports/lr_find/houses.json")
WEIGHTS = Path("models/houses.pt")
CHECKPOINT = Path("checkpoints/houses/last.pt")
# cv_houses' outputs, read by evaluate_houses
CV_RECORD = Path("reports/cv/houses.json")  # every number of the cross-validation
CV_PREDICTIONS = Path("models/houses_cv_predictions.pt")  # test Ids and the bagged test log-prices
CV_CURVE = Path("reports/plots/houses/cv_curve.csv")  # per epoch: the mean validation RMSLE and each fold's

_RMSLE = {"type": "number", "minimum": 0}
CV_RECORD_FILE = JsonFile("cv_houses", CV_RECORD.as_posix(), record({
    "cv_rmsle": _RMSLE, "cv_rmsle_sd": _RMSLE, "cv_fold_rmsle": array(_RMSLE),
    "cv_rmsle_without_outliers": _RMSLE, "cv_fold_rmsle_without_outliers": array(_RMSLE),
    "cv_epoch": {"type": "integer", "minimum": 1}, "cv_epochs_run": {"type": "integer", "minimum": 1},
    "cv_rmsle_last_epoch": _RMSLE, "cv_folds": {"type": "integer", "minimum": 2},
    "cv_seeds": {"type": "integer", "minimum": 1}, "cv_held_out_rows": array(COUNT),
    "cv_held_out_outlier_rows": array(COUNT), "cv_lr": {"type": "number", "exclusiveMinimum": 0},
}))
CV_PREDICTIONS_FILE = TensorFile("cv_houses", CV_PREDICTIONS.as_posix(), {
    "id": Tensor("int64", ("N",), min=0, unique=True), "log_price": Tensor(FLOAT, ("N",))})
CV_CURVE_FILE = CsvFile("cv_houses", CV_CURVE.as_posix(), {"epoch": "number", "cv_rmsle": "number",
                                                          "chosen_epoch": "number"})


def loaders(params: Params, device: torch.device) -> tuple[TensorLoader, TensorLoader]:
    cfg = params.houses.train
    train, val = load_split("train", device), load_split("val", device)
    train_loader = TensorLoader(train["x"], train["y"], cfg.batch_size, shuffle=True, seed=params.seed,
                                max_batches=cfg.max_batches)
    val_loader = TensorLoader(val["x"], val["y"], batch_size=4096)
    return train_loader, val_loader


def build_model(params: Params, train_loader: TensorLoader, device: torch.device, seed: int | None = None) -> HouseMLP:
    """``houses.model`` for the loader's inputs, its initial weights drawn from ``seed``
    (default ``params.seed``: the same for the range test and training)."""
    torch.manual_seed(params.seed if seed is None else seed)
    return empty_model(params, train_loader.inputs.shape[1], float(train_loader.targets.mean())).to(device)


def empty_model(params: Params, n_features: int, mean_log_price: float = 0.0) -> HouseMLP:
    """``houses.model``; the output bias starts at ``mean_log_price`` (weights to load: any)."""
    cfg = params.houses.model
    return HouseMLP(n_features, cfg.hidden, output_bias=mean_log_price, skip=cfg.skip)
