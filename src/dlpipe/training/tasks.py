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


def classification() -> Task:
    """Logits against class indices: cross-entropy to train on, validation
    accuracy to keep the best epoch by (higher is better; of equal accuracies
    the later epoch wins)."""
    loss_fn = torch.nn.CrossEntropyLoss()

    def metrics(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        outputs = outputs.float()
        return {
            "val_loss": torch.nn.functional.cross_entropy(outputs, targets).item(),
            "val_accuracy": (outputs.argmax(dim=1) == targets).float().mean().item(),
        }

    return Task(loss_fn=loss_fn, metrics_fn=metrics, monitor="val_accuracy", mode="max", later_ties_win=True)
