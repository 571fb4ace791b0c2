"""A plain grid of generated images as a PNG (torchvision's make_grid), written atomically.

No matplotlib: the picture is the images themselves at their own resolution,
so PNG bytes depend only on the pixels (equal samples, equal files, equal DVC hashes).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid

from dlpipe.io import atomic_path


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8 0..255, as a saved picture holds it."""
    return ((images.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, immediate: bool = False) -> None:
    """``images``: uint8 N x C x H x W (C = 1 or 3); a square-ish grid with 2 px gaps.
    ``immediate``: on disk at once, even inside ``io.outputs_together`` (a training run's progress)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 N x (1|3) x H x W images, got {images.dtype} {tuple(images.shape)}")
    nrow = nrow or math.ceil(math.sqrt(len(images)))
    grid = make_grid(images.detach().cpu(), nrow=nrow, padding=2, pad_value=0)  # C x H x W, 3 channels
    if images.shape[1] == 1:
        grid = grid[:1]  # make_grid repeats grey to 3 channels; keep one
    array = grid.permute(1, 2, 0).squeeze(-1).numpy()
    with atomic_path(path, immediate) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
