"""A plain grid of generated images as a PNG (the layout of torchvision's make_grid), written atomically.

No matplotlib: the picture is the images themselves at their own resolution,
so PNG bytes depend only on the pixels (equal samples, equal files, equal DVC hashes).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image

from dlpipe.io import atomic_path


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8 0..255, as a saved picture holds it."""
    return ((images.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def tile(images: torch.Tensor, nrow: int, padding: int = 2) -> torch.Tensor:
    """N x C x H x W -> C x H' x W': ``nrow`` images a row, ``padding`` zero pixels around
    and between them; one image is returned as it is. torchvision's make_grid lays images
    out the same way (tests/test_dcgan.py compares the two); it is not imported because
    torchvision's import costs about 2.5 s of the stage's start."""
    if len(images) == 1:
        return images[0]
    n, channels, height, width = images.shape
    columns = min(nrow, n)
    rows = math.ceil(n / columns)
    grid = images.new_zeros(channels, rows * (height + padding) + padding, columns * (width + padding) + padding)
    for k, image in enumerate(images):
        top, left = (k // columns) * (height + padding) + padding, (k % columns) * (width + padding) + padding
        grid[:, top:top + height, left:left + width] = image
    return grid


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, immediate: bool = False) -> None:
    """``images``: uint8 N x C x H x W (C = 1 or 3); a square-ish grid with 2 px gaps.
    ``immediate``: on disk at once, even inside ``io.outputs_together`` (a training run's progress)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 N x (1|3) x H x W images, got {images.dtype} {tuple(images.shape)}")
    nrow = nrow or math.ceil(math.sqrt(len(images)))
    array = tile(images.detach().cpu(), nrow).permute(1, 2, 0).squeeze(-1).numpy()
    with atomic_path(path, immediate) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
