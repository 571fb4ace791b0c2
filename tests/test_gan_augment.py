"""DiffAugment for the DCGAN's discriminator: every output image is its input
shifted (or with one square cut) to background, per image, differentiably,
and repeatable from the generator's state."""

from __future__ import annotations

import pytest
import torch

from dlpipe.training.gan_augment import BACKGROUND, DiffAugment, cutout, translate


def images(n: int = 16, side: int = 32) -> torch.Tensor:
    # No pixel at the background value, so every background pixel of an output was made by the augmentation.
    return torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Reference: ``image`` moved by (dy, dx), the rest background (output[y, x] = input[y + dy, x + dx])."""
    _, h, w = image.shape
    out = torch.full_like(image, BACKGROUND)
    ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
    xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    out[:, yd, xd] = image[:, ys, xs]
    return out


def test_translation_is_a_per_image_shift_within_reach():
    x = images()
    out = translate(x, 0.125, torch.Generator().manual_seed(1))  # reach: 4 px of 32
    shifts = []
    for before, after in zip(x, out):
        found = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5) if torch.equal(after, shifted(before, dy, dx))]
        assert len(found) == 1, "each output is exactly one shift of its input"
        shifts.append(found[0])
    assert len(set(shifts)) > 1, "shifts are drawn per image"


def test_cutout_sets_one_square_per_image_to_background():
    x = images()
    out = cutout(x, 0.5, torch.Generator().manual_seed(2))  # a 16 px square, may hang over the border
    for before, after in zip(x, out):
        cut = after[0] == BACKGROUND
        assert torch.equal(after[0][~cut], before[0][~cut]), "everything outside the square is untouched"
        rows, cols = cut.any(dim=1).nonzero().flatten(), cut.any(dim=0).nonzero().flatten()
        assert 1 <= len(rows) <= 16 and 1 <= len(cols) <= 16
        assert cut.sum() == len(rows) * len(cols), "the cut region is one rectangle (a square clipped by the border)"
        assert rows.diff().eq(1).all() and cols.diff().eq(1).all()


def test_gradients_reach_the_generator_through_both_operations():
    x = images(4).requires_grad_()
    augment = DiffAugment(0.125, 0.25, torch.Generator().manual_seed(3))
    weights = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32)
    (augment(x) * weights).sum().backward()
    moved = (x.grad != 0).float().mean()
    assert 0.5 < moved < 1.0, "the pixels still visible get a gradient, the shifted-out or cut ones none"


def test_same_generator_state_same_views_and_zero_is_off():
    x = images()
    a = DiffAugment(0.125, 0.5, torch.Generator().manual_seed(4))
    b = DiffAugment(0.125, 0.5, torch.Generator().manual_seed(4))
    assert torch.equal(a(x), b(x)) and torch.equal(a(x), b(x))
    assert not torch.equal(a(x), a(x)), "the generator advances: the next batch gets other shifts"
    off = DiffAugment(0.0, 0.0, torch.Generator().manual_seed(4))
    assert not off.active and off(x) is x


@pytest.mark.parametrize("ratio", [0.01, 0.0])
def test_a_reach_under_half_a_pixel_leaves_images_alone(ratio):
    x = images()
    assert translate(x, ratio, torch.Generator()) is x and cutout(x, ratio, torch.Generator()) is x
