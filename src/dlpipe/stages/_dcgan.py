"""What the DCGAN stages share: paths, the networks as params and the prepared
data describe them, and the seeded noise everything is drawn from."""

from __future__ import annotations

from pathlib import Path

import torch

from dlpipe.config import Params
from dlpipe.layouts import OBJECT, JsonFile
from dlpipe.models.dcgan import Discriminator, Generator, build
from dlpipe.training import live

GENERATOR_WEIGHTS = Path("models/dcgan_generator.pt")
DISCRIMINATOR_WEIGHTS = Path("models/dcgan_discriminator.pt")
CHECKPOINT = Path("checkpoints/dcgan/last.pt")
SAMPLES_STORE = Path("checkpoints/dcgan/samples")  # every epoch's grid, kept for a resumed run
SAMPLES_DIR = Path("reports/dcgan")
FINAL_GRID = Path("reports/plots/dcgan/final_grid.png")
# train_dcgan's DVCLive folder: one row per step (losses, D(x), D(G(z)), its epoch); the report
# draws epoch means of it
LIVE = live.stage_dir("train_dcgan")
TRAIN_RECORD = Path("reports/details/dcgan_train.json")  # what went wrong in training (NaN steps, collapse)
TRAIN_RECORD_FILE = JsonFile("train_dcgan", TRAIN_RECORD.as_posix(), OBJECT)

# Separate streams, so that changing one draw (say, more grid images) leaves the others alone.
FIXED_NOISE_OFFSET, EVAL_NOISE_OFFSET, CLASS_NOISE_OFFSET, REAL_DRAW_OFFSET = 1, 2, 3, 4


def resolve_nc(nc: int | str, dataset: str) -> int:
    """``auto``: grey for digits (its three channels are equal), colour otherwise."""
    if nc == "auto":
        return 1 if dataset == "digits" else 3
    return int(nc)


def build_networks(params: Params, nc: int, device: torch.device) -> tuple[Generator, Discriminator]:
    """Both networks, initialised under ``seed``: the same draw gives training its
    start and evaluation its untrained generator (the FID ceiling)."""
    torch.manual_seed(params.seed)
    arch = params.dcgan.model
    generator, discriminator = build(arch.nz, arch.ngf, arch.ndf, nc, params.dcgan.image_size)
    return generator.to(device), discriminator.to(device)


def noise(count: int, nz: int, seed: int, device: torch.device) -> torch.Tensor:
    """``count`` latent vectors N(0, 1), drawn on the CPU (same numbers on every device)."""
    return torch.randn(count, nz, 1, 1, generator=torch.Generator().manual_seed(seed)).to(device)


@torch.no_grad()
def generate(generator: Generator, z: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Images in [-1, 1] from ``z``, in eval mode (BatchNorm's running statistics, so a
    sample does not depend on the other samples of its batch); the mode is restored."""
    was_training = generator.training
    generator.eval()
    try:
        return torch.cat([generator(z[i:i + batch]) for i in range(0, len(z), batch)])
    finally:
        generator.train(was_training)
