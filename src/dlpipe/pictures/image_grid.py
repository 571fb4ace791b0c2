"""A grid of images with a caption each (e.g. misclassified validation images),
drawn with matplotlib (Agg), written atomically."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: stages run on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from dlpipe.io import atomic_path  # noqa: E402


def plot_image_grid(images: torch.Tensor, captions: list[str], png_path: Path, title: str,
                    columns: int = 6, empty_note: str = "nothing to show") -> None:
    """``images``: uint8 N x 3 x H x W (what the network saw, before normalising)."""
    n = len(images)
    cols = max(1, min(columns, n))
    rows = max(1, math.ceil(n / cols))
    # At least 6 inches wide: the title (and the note when empty) must fit.
    height = 2.2 * rows + 0.6 if n else 1.6
    fig, axes = plt.subplots(rows, cols, figsize=(max(6.0, 2.0 * cols + 0.4), height), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if n == 0:
        axes[0, 0].text(0.5, 0.5, empty_note, ha="center", va="center", fontsize=11)
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image.permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
