"""Losses and validation metrics per kind of problem."""

from __future__ import annotations

import torch

from dlpipe.training.loop import Task


def rmse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # eps keeps the gradient of sqrt finite at a perfect fit.
    return torch.sqrt(torch.mean((outputs - targets) ** 2) + 1e-12)


def log_price_regression() -> Task:
    """Outputs and targets are log1p(price): RMSE here *is* Kaggle's RMSLE, and
    no log is taken of a raw output, so the loss is never NaN."""

    def metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return {"val_rmsle": rmse(outputs.float(), targets.float()).item()}

    return Task(loss_fn=rmse, metrics_fn=metrics, monitor="val_rmsle", mode="min")
