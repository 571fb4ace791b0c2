"""Differentiable augmentation of everything the discriminator sees (DiffAugment,
Zhao et al., NeurIPS 2020).

On a small training set (1,259 digits by default) the discriminator learns the
real images by heart and the generator's signal fades. Shifting and cutting
*both* the real batch and the fake batch, in the D step and in the G step,
keeps D from memorising pixel positions while G is still pushed towards the
un-augmented distribution: the operations are plain indexing and masking, so
G's gradient flows through them, and samples are drawn without them.

Everything is batched (one gather per batch, no per-image Python) and drawn
from a ``torch.Generator`` on the batch's device, so a checkpointed generator
state makes a resumed run repeat the same shifts. Vacated pixels are filled
with -1, the background of images scaled to [-1, 1] (black).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BACKGROUND = -1.0


def translate(images: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by a whole number of pixels in [-r, r] along each axis,
    r = round(ratio * side), independently per image; vacated pixels become background."""
    n, _, height, width = images.shape
    reach = int(height * ratio + 0.5)
    if reach == 0:
        return images
    shift_y, shift_x = (torch.randint(-reach, reach + 1, (n, 1, 1), device=images.device, generator=generator)
                        for _ in range(2))
    # Indices into a copy padded by one background pixel: clamping lands every
    # out-of-range read on that pad (DiffAugment's construction).
    rows = (torch.arange(height, device=images.device).view(1, height, 1) + shift_y + 1).clamp(0, height + 1)
    cols = (torch.arange(width, device=images.device).view(1, 1, width) + shift_x + 1).clamp(0, width + 1)
    padded = F.pad(images, [1, 1, 1, 1], value=BACKGROUND).permute(0, 2, 3, 1)  # N x H+2 x W+2 x C
    batch = torch.arange(n, device=images.device).view(n, 1, 1)
    return padded[batch, rows, cols].permute(0, 3, 1, 2)


def cutout(images: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Set one square of side round(ratio * side) per image, centred anywhere (it
    may hang over the border), to background."""
    n, _, height, width = images.shape
    side = int(height * ratio + 0.5)
    if side == 0:
        return images
    centre_y, centre_x = (torch.randint(0, size, (n, 1, 1), device=images.device, generator=generator)
                          for size in (height, width))
    rows = torch.arange(height, device=images.device).view(1, height, 1)
    cols = torch.arange(width, device=images.device).view(1, 1, width)
    inside = ((rows - centre_y).abs() * 2 < side) & ((cols - centre_x).abs() * 2 < side)  # N x H x W
    return images.masked_fill(inside.unsqueeze(1), BACKGROUND)


class DiffAugment:
    """The discriminator's view of a batch: translation, then cutout; either off at 0."""

    def __init__(self, translation: float, cutout: float, generator: torch.Generator):
        self.translation, self.cutout, self.generator = translation, cutout, generator

    @property
    def active(self) -> bool:
        return bool(self.translation or self.cutout)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.translation:
            images = translate(images, self.translation, self.generator)
        if self.cutout:
            images = cutout(images, self.cutout, self.generator)
        return images
