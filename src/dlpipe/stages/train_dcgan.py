"""Stage train_dcgan: PyTorch's DCGAN tutorial's networks and updates on data/prepared/gan.

Both networks initialised N(0, 0.02) under ``seed``; BCE; one Adam each
(lr and betas from params); the training batches are slices of
a seeded permutation, scaled to [-1, 1]. With ``translation`` / ``cutout``
set, the discriminator sees every batch (real and fake, D step and G step)
through DiffAugment (training/gan_augment.py), its shifts drawn from the same
checkpointed generator as the noise. After every epoch the generator draws
the same fixed noise batch into reports/dcgan/epoch_NNN.png; the last one is
also reports/plots/dcgan/final_grid.png (a DVC plot image). Per-step losses,
D(x) and D(G(z)) go to DVCLive (dvclive/train_dcgan/), a resumable checkpoint
to checkpoints/dcgan/ every epoch, the final weights to
models/dcgan_{generator,discriminator}.pt, and what went wrong (NaN steps, a
discriminator that won completely) to reports/details/dcgan_train.json.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from typing import NamedTuple

import torch

from dlpipe import runtime, tensor_io
from dlpipe.config import Params
from dlpipe.data.gan_prepared import META_JSON, PREPARED_DIR, TRAIN, load_images, load_meta, to_unit_range
from dlpipe.data.loaders import TensorLoader
from dlpipe.declare import Stage
from dlpipe.io import atomic_dir
from dlpipe.pictures.sample_grid import save_grid, to_uint8
from dlpipe.stages._dcgan import (CHECKPOINT, DISCRIMINATOR_WEIGHTS, FINAL_GRID, FIXED_NOISE_OFFSET, GENERATOR_WEIGHTS,
                                  LIVE, SAMPLES_DIR, SAMPLES_STORE, TRAIN_RECORD, TRAIN_RECORD_FILE, build_networks, generate, noise)
from dlpipe.training.checkpoint import run_identity
from dlpipe.training.gan import GanResult, epoch_means, fit_gan
from dlpipe.training.gan_augment import DiffAugment
from dlpipe.training import live
from dlpipe.training.state import RunFiles

log = logging.getLogger(__name__)


STAGE = Stage(
    params=("seed", "device", "dcgan.image_size", "dcgan.model", "dcgan.train"),
    deps=(PREPARED_DIR,),
    outs=(GENERATOR_WEIGHTS, DISCRIMINATOR_WEIGHTS, SAMPLES_DIR, live.plots_dir(LIVE), TRAIN_RECORD),
    metrics=(live.metrics_file(LIVE),),
    plots=(FINAL_GRID,),
    plot_groups={"dcgan_losses": live.plot_group({LIVE: ["loss_d", "loss_g"]}),
                 "dcgan_discriminator_outputs": live.plot_group({LIVE: ["d_x", "d_g_z1", "d_g_z2"]})},
    mem_mb=8000, runtime=240,
)


def grid_name(epoch: int) -> str:
    return f"epoch_{epoch:03d}.png"


class EpochGrids:
    """The fixed-noise grid after every epoch: into the checkpoint folder (which
    survives a rerun: DVC and Snakemake delete a stage's outputs before running
    it) and into reports/dcgan for a look while training runs. Both are progress,
    written at once (``immediate``); ``publish`` makes reports/dcgan the stage's output."""

    def __init__(self, fixed_noise: torch.Tensor):
        self.fixed_noise = fixed_noise

    def __call__(self, epoch: int, generator: torch.nn.Module) -> None:
        images = to_uint8(generate(generator, self.fixed_noise))
        save_grid(images, SAMPLES_STORE / grid_name(epoch), immediate=True)
        save_grid(images, SAMPLES_DIR / grid_name(epoch), immediate=True)

    @staticmethod
    def publish(epochs: int) -> None:
        """reports/dcgan holds exactly this run's grids, epochs 1..epochs (a resumed
        run's earlier ones come from the store); the store drops any later ones."""
        with atomic_dir(SAMPLES_DIR) as staging:
            for epoch in range(1, epochs + 1):
                source = SAMPLES_STORE / grid_name(epoch)
                if source.is_file():
                    shutil.copyfile(source, staging / grid_name(epoch))
                else:
                    log.warning("%s is missing (the checkpoint folder was edited?): epoch %d has no grid",
                                source, epoch)
        for stale in SAMPLES_STORE.glob("epoch_*.png"):
            if not stale.stem[len("epoch_"):].isdigit() or int(stale.stem[len("epoch_"):]) > epochs:
                stale.unlink()


def summary(history: list[dict], watch: dict, epochs: int) -> dict:
    """Flat numbers for reports/details/dcgan_train.json: last epoch's means and the trouble counts."""
    last = epoch_means([row for row in history if row["epoch"] == epochs])
    return {
        "epochs": epochs, "steps": len(history),
        **{f"final_{key}": value for key, value in last.items() if math.isfinite(value)},
        "nan_steps": watch["nan_steps"],
        "d_collapse_steps": watch["collapse_steps"],
        "d_collapse_longest": watch["longest"],
        "d_collapse_alerts": watch["alerts"],
    }


class Setup(NamedTuple):
    """What fit_gan needs, built from params as this stage builds it (bench.gan_sweep reuses it)."""

    generator: torch.nn.Module
    discriminator: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    loader: TensorLoader
    noise_generator: torch.Generator
    augment: DiffAugment
    meta: dict


def setup_training(params: Params, device: torch.device) -> Setup:
    cfg = params.dcgan.train
    meta = load_meta()
    images = load_images(TRAIN, meta, device)
    # drop_last: every step sees a full batch (BatchNorm statistics of equal-sized batches)
    loader = TensorLoader(images, torch.zeros(len(images), device=device), cfg.batch_size, shuffle=True,
                          seed=params.seed, drop_last=True, transform=to_unit_range, max_batches=cfg.max_batches)
    generator, discriminator = build_networks(params, meta["nc"], device)
    betas = (cfg.beta1, cfg.beta2)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr, betas=betas)
    noise_generator = torch.Generator(device=device).manual_seed(params.seed)
    return Setup(generator, discriminator, opt_g, opt_d, loader, noise_generator,
                 DiffAugment(cfg.translation, cfg.cutout, noise_generator), meta)


def train(run: Setup, params: Params, **options) -> GanResult:
    """fit_gan with the params' settings; ``options``: files (RunFiles), epoch hook."""
    cfg = params.dcgan.train
    return fit_gan(run.generator, run.discriminator, run.opt_g, run.opt_d, run.loader, run.noise_generator,
                   nz=params.dcgan.model.nz, epochs=cfg.epochs, collapse_threshold=cfg.collapse_threshold,
                   collapse_patience=cfg.collapse_patience, ema_decay=cfg.ema_decay, ema_warmup=cfg.ema_warmup,
                   augment=run.augment, r1_gamma=cfg.r1_gamma, r1_interval=cfg.r1_interval, **options)


def main(params: Params) -> None:
    device = runtime.setup(params.seed, params.device)
    cfg, arch = params.dcgan.train, params.dcgan.model
    run = setup_training(params, device)
    grids = EpochGrids(noise(cfg.grid_images, arch.nz, params.seed + FIXED_NOISE_OFFSET, device))

    started = time.perf_counter()
    result = train(
        run, params, files=RunFiles(
            name="train_dcgan", checkpoint=CHECKPOINT,
            identity=run_identity(__name__, params, [PREPARED_DIR / TRAIN, PREPARED_DIR / META_JSON]),
            live=LIVE, step_key="step"), on_epoch_end=grids,
    )
    EpochGrids.publish(cfg.epochs)
    save_grid(to_uint8(generate(result.sampler, grids.fixed_noise)), FINAL_GRID)
    tensor_io.save_weights(GENERATOR_WEIGHTS, result.sampler.state_dict())
    tensor_io.save_weights(DISCRIMINATOR_WEIGHTS, run.discriminator.state_dict())
    metrics = summary(result.history, result.watch, cfg.epochs)
    TRAIN_RECORD_FILE.write(TRAIN_RECORD, metrics)
    log.info("dcgan on %s: %d epochs (%d run now, %.1f s), %d steps, nan_steps %d, d_collapse_steps %d "
             "(longest %d, alerts %d)", run.meta["dataset"], cfg.epochs, result.epochs_run,
             time.perf_counter() - started, metrics["steps"], metrics["nan_steps"], metrics["d_collapse_steps"],
             metrics["d_collapse_longest"], metrics["d_collapse_alerts"])
