"""Batched image augmentation and normalisation on uint8 tensors, no per-image Python.

A batch ``x`` is uint8 B x C x H x W on any device. ``random_crop_flip`` pads
the whole batch once, then gathers every image's H x W window at its own random
offset, mirrored or not, with one advanced-indexing read: the random numbers
come from the loader's CPU generator (same numbers on every device), the
gather runs where the batch lives.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int, flip: bool) -> torch.Tensor:
    """Random H x W crops of the zero-padded images, each mirrored left-right with
    probability 1/2 when ``flip``. Same dtype and shape as ``x``."""
    if padding == 0 and not flip:
        return x
    b, c, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator)
    mirror = torch.rand(b, generator=generator) < 0.5 if flip else torch.zeros(b, dtype=torch.bool)
    dy, dx, mirror = offsets[0].to(x.device), offsets[1].to(x.device), mirror.to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    rows = dy[:, None] + torch.arange(h, device=x.device)  # B x H
    cols_ahead = torch.arange(w, device=x.device)
    cols = dx[:, None] + torch.where(mirror[:, None], cols_ahead.flip(0), cols_ahead)  # B x W
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


class Normalize:
    """uint8 0..255 -> float, per channel ``(x / 255 - mean) / std`` (stats in 0..1 units)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"):
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        # One fused multiply-add: x * scale + shift.
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x.float(), self.scale)


class TrainTransform:
    """The training batches' hook for TensorLoader: augment, then normalise."""

    def __init__(self, normalize: Normalize, crop_padding: int, flip: bool):
        self.normalize, self.crop_padding, self.flip = normalize, crop_padding, flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.normalize(random_crop_flip(x, generator, self.crop_padding, self.flip))


class EvalTransform:
    """Validation and test batches: normalise only."""

    def __init__(self, normalize: Normalize):
        self.normalize = normalize

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.normalize(x)
