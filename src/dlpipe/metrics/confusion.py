"""The confusion matrix of a classifier's predictions, counted with torch."""

from __future__ import annotations

import torch


def confusion_matrix(actual: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 num_classes x num_classes; rows are the actual class, columns the predicted one."""
    pairs = actual.long().cpu() * num_classes + predicted.long().cpu()
    return torch.bincount(pairs, minlength=num_classes * num_classes).view(num_classes, num_classes)
