"""The transforms of PyTorch's transfer-learning tutorial, on whole batches of uint8 tensors.

Training: torchvision's ``RandomResizedCrop(size, scale, ratio)`` then
``RandomHorizontalFlip()``; validation: ``Resize(round(size / crop_fraction))``
then ``CenterCrop(size)`` (the tutorial's 256 -> 224 is crop_fraction 0.875); both
then ``Normalize`` with ImageNet's statistics.

Every image's crop box is drawn as ``RandomResizedCrop.get_params`` draws it
(area share in ``scale``, log-uniform aspect ratio in ``ratio``, ten tries,
then the centre crop), for the whole batch at once from the loader's CPU
generator. One ``affine_grid`` + ``grid_sample`` then cuts every box out of
its image, mirrored or not, and resizes it bilinearly, where the batch lives.
Unlike torchvision's ``Resize`` this resampling has no antialiasing filter
(``transfer.prepare.max_side`` keeps the shrink factors small), and at a box's
inner edges bilinear weights may reach the pixel just outside the box, where
torchvision's crop-then-resize clamps to the box.

Images sit in the top-left corner of a zero canvas (data/transfer_images.py);
sample points are clamped to each image's own pixels, so no canvas padding
bleeds into a crop (as torchvision's resize, the edge pixel is repeated).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from dlpipe.data.augment import Normalize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRIES = 10  # RandomResizedCrop.get_params' attempts before its centre-crop fallback


def random_resized_boxes(sizes: torch.Tensor, generator: torch.Generator, scale: Sequence[float],
                         ratio: Sequence[float]) -> torch.Tensor:
    """float64 B x 4 boxes (top, left, height, width) in whole pixels, one per image
    of height and width ``sizes`` (B x 2, CPU), drawn as RandomResizedCrop does."""
    h, w = sizes[:, 0].double(), sizes[:, 1].double()
    b = len(sizes)
    area = (h * w)[:, None]
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(b, TRIES, generator=generator, dtype=torch.float64))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(b, TRIES, generator=generator, dtype=torch.float64))
    cw, ch = torch.sqrt(target * aspect).round(), torch.sqrt(target / aspect).round()
    fits = (cw > 0) & (ch > 0) & (cw <= w[:, None]) & (ch <= h[:, None])
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first try that fits
    cw, ch = cw.gather(1, first).squeeze(1), ch.gather(1, first).squeeze(1)
    offsets = torch.rand(b, 2, generator=generator, dtype=torch.float64)
    top = torch.floor(offsets[:, 0] * (h - ch + 1))
    left = torch.floor(offsets[:, 1] * (w - cw + 1))
    # No try fitted: the largest centred crop whose aspect ratio is within ``ratio``.
    in_ratio = w / h
    fw = torch.where(in_ratio > ratio[1], (h * ratio[1]).round(), w)
    fh = torch.where(in_ratio < ratio[0], (w / ratio[0]).round(), h)
    fallback = torch.stack([torch.floor((h - fh) / 2), torch.floor((w - fw) / 2), fh, fw], dim=1)
    drawn = torch.stack([top, left, ch, cw], dim=1)
    return torch.where(fits.any(dim=1, keepdim=True), drawn, fallback)


def center_boxes(sizes: torch.Tensor, size: int, crop_fraction: float) -> torch.Tensor:
    """Boxes of Resize(round(size / crop_fraction)) + CenterCrop(size), in source pixels."""
    h, w = sizes[:, 0].double(), sizes[:, 1].double()
    resized_short_side = round(size / crop_fraction)
    side = torch.minimum(h, w) * size / resized_short_side
    return torch.stack([(h - side) / 2, (w - side) / 2, side, side], dim=1)


def crop_resize(images: torch.Tensor, sizes: torch.Tensor, boxes: torch.Tensor, size: int,
                mirror: torch.Tensor | None = None) -> torch.Tensor:
    """float32 B x C x size x size in 0..255: each box of each image, resized
    bilinearly, mirrored left-right where ``mirror``. ``images`` uint8 B x C x H x W."""
    b, c, height, width = images.shape
    device = images.device
    boxes = boxes.to(device=device, dtype=torch.float32)
    sizes = sizes.to(device=device, dtype=torch.float32)
    top, left, box_h, box_w = boxes.unbind(1)
    # align_corners=False: x_norm = 2 * x_edge / W - 1, pixel i spanning edges [i, i + 1].
    sign = 1.0 - 2.0 * mirror.to(device=device, dtype=torch.float32) if mirror is not None else 1.0
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0] = sign * box_w / width
    theta[:, 0, 2] = (2 * left + box_w) / width - 1
    theta[:, 1, 1] = box_h / height
    theta[:, 1, 2] = (2 * top + box_h) / height - 1
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
    # Clamp to the centres of the image's first and last pixels, per image.
    lo_x = torch.full_like(sizes[:, 1], 1 / width - 1)[:, None, None]
    lo_y = torch.full_like(sizes[:, 0], 1 / height - 1)[:, None, None]
    hi_x = ((2 * sizes[:, 1] - 1) / width - 1)[:, None, None]
    hi_y = ((2 * sizes[:, 0] - 1) / height - 1)[:, None, None]
    grid = torch.stack([grid[..., 0].clamp(lo_x, hi_x), grid[..., 1].clamp(lo_y, hi_y)], dim=-1)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def imagenet_normalize(device: torch.device | str = "cpu") -> Normalize:
    return Normalize(IMAGENET_MEAN, IMAGENET_STD, device)


class RandomResizedCropFlip:
    """TensorLoader batch hook for training. The loader's inputs are image
    *indices*: images differ in size, so a batch needs the sizes beside the
    pixels, and the hook looks both up here."""

    def __init__(self, images: torch.Tensor, sizes: torch.Tensor, size: int, scale: Sequence[float],
                 ratio: Sequence[float], flip: bool, normalize: Normalize):
        self.images, self.sizes_cpu = images, sizes.cpu()
        self.size, self.scale, self.ratio, self.flip, self.normalize = size, tuple(scale), tuple(ratio), flip, normalize

    def __call__(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        index = index.cpu()
        sizes = self.sizes_cpu[index]
        boxes = random_resized_boxes(sizes, generator, self.scale, self.ratio)
        mirror = torch.rand(len(index), generator=generator) < 0.5 if self.flip else None
        batch = self.images[index.to(self.images.device)]
        return self.normalize(crop_resize(batch, sizes, boxes, self.size, mirror))


def eval_crops(images: torch.Tensor, sizes: torch.Tensor, size: int, crop_fraction: float,
               chunk: int = 256) -> torch.Tensor:
    """uint8 N x C x size x size: every image resized and centre-cropped once
    (deterministic), so validation batches only need normalising."""
    boxes = center_boxes(sizes.cpu(), size, crop_fraction)
    parts = [crop_resize(images[i:i + chunk], sizes[i:i + chunk], boxes[i:i + chunk], size)
             for i in range(0, len(images), chunk)]
    return torch.cat(parts).round().clamp(0, 255).to(torch.uint8)
