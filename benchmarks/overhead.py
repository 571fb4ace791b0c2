"""Figure 4: per model, the pipeline's training loop against a bare PyTorch loop
over the same tensors, batches and batch size.

The pipeline side is the code the stages run: ``loop.train_one_epoch`` (houses,
LeNet, both transfer stages) and ``gan.fit_gan`` for one epoch (DCGAN), on the
stages' own loaders (``dlpipe.stages._<model>``), so batching and the batched
augmentation are the same on both sides. The bare side is forward, loss,
zero_grad, backward, step (for the DCGAN the DCGAN tutorial's D step then G step), with
no loss read-back, no finiteness check, no bookkeeping. Each side has its own
model and optimizer from the same initial weights; both walk the same epochs
(the same batches) in alternation. ``loop_overhead`` = pipeline / bare median.
"""

from __future__ import annotations

import contextlib
import functools
import io
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from benchmarks.timing import alternate, compare, units_per_sample
from dlpipe.training import loop

MODELS = ("houses", "lenet", "transfer_head", "transfer_finetune", "dcgan")
# The LRs both sides train at: the speed does not depend on them.
FIXED_LR = {"houses": 1e-3, "lenet": 1e-2, "transfer_head": 1e-3, "transfer_finetune": 1e-4}


@dataclass
class Workload:
    name: str
    samples_per_epoch: int  # images (rows for houses) one epoch trains on
    batch_size: int
    pipeline_epoch: Callable[[int], None]  # epoch index -> one epoch of the pipeline's loop
    bare_epoch: Callable[[int], None]  # epoch index -> one epoch of the bare loop, same batches
    sync: Callable[[], None] = lambda: None  # waits for queued device work (CUDA)
    sides: dict = field(default_factory=dict)  # {"pipeline": its models and optimizers, "bare": ...}: for checks
    steps_per_epoch: int = 0  # optimizer steps an epoch (the DCGAN: D and G step pairs)
    # One epoch of the pipeline side as its training stage runs it by default, where that differs from
    # pipeline_epoch: the DCGAN's R1 penalty, generator EMA and DiffAugment (which the bare side lacks).
    stage_epoch: Callable[[int], None] | None = None


def epoch_samples(loader) -> int:
    batches = len(loader)
    return min(len(loader.inputs), batches * loader.batch_size) if not loader.drop_last else batches * loader.batch_size


def device_sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def bare_epoch(model: nn.Module, loader, loss_fn, optimizer) -> None:
    model.train()
    for inputs, targets in loader:
        loss = loss_fn(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def loop_workload(name: str, loader, loss_fn, make: Callable[[], tuple[nn.Module, torch.optim.Optimizer]],
                  device: torch.device) -> Workload:
    """Two (model, optimizer) pairs from ``make`` (seeded: the same start), one loader."""
    ours, bare = make(), make()

    def pipeline(epoch: int) -> None:
        loader.set_epoch(epoch)
        loop.train_one_epoch(ours[0], loader, loss_fn, ours[1], None, epoch)

    def plain(epoch: int) -> None:
        loader.set_epoch(epoch)
        bare_epoch(bare[0], loader, loss_fn, bare[1])

    return Workload(name, epoch_samples(loader), loader.batch_size, pipeline, plain, device_sync(device),
                    {"pipeline": ours, "bare": bare}, len(loader))


def bare_gan_epoch(generator, discriminator, opt_g, opt_d, loader, noise_generator, nz: int,
                   r1_gamma: float = 0.0, r1_interval: int = 1, ema=None) -> None:
    """The DCGAN tutorial's step, bare: D on real (label 1) and detached fake (label 0), step; G
    through D, step. As train_dcgan trains by default, when given: gamma / 2 x the R1 penalty
    (D's squared input gradient on the real batch, a double backward) on every
    ``r1_interval``-th step, times the interval, and the generator's EMA after each G step."""
    criterion = nn.BCELoss()
    loader.set_epoch(0)  # fit_gan(epochs=1) walks epoch 0's batches
    for step, (real, _) in enumerate(loader):
        noise = torch.randn(real.size(0), nz, 1, 1, device=real.device, generator=noise_generator)
        discriminator.zero_grad(set_to_none=True)
        label = torch.full((real.size(0),), 1.0, device=real.device)
        gamma = r1_gamma * r1_interval if r1_gamma and step % r1_interval == 0 else 0.0
        if gamma:
            real = real.detach().requires_grad_(True)
            logits = discriminator.logits(real).view(-1)
            (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
            (criterion(torch.sigmoid(logits), label) + gamma / 2 * grad.pow(2).flatten(1).sum(1).mean()).backward()
        else:
            criterion(discriminator(real).view(-1), label).backward()
        fake = generator(noise)
        label.fill_(0.0)
        criterion(discriminator(fake.detach()).view(-1), label).backward()
        opt_d.step()
        generator.zero_grad(set_to_none=True)
        label.fill_(1.0)
        criterion(discriminator(fake).view(-1), label).backward()
        opt_g.step()
        if ema is not None:
            ema.update_parameters(generator)


def gan_workload(params, device: torch.device, images: torch.Tensor | None = None, nc: int | None = None) -> Workload:
    """train_dcgan's loader, networks and optimizers; ``images`` (uint8 N x nc x S x S) stand in
    for the prepared data when given."""
    from dlpipe.data.gan_prepared import TRAIN, load_images, load_meta, to_unit_range
    from dlpipe.data.loaders import TensorLoader
    from dlpipe.stages._dcgan import build_networks
    from dlpipe.training.gan import ema_of, fit_gan
    from dlpipe.training.gan_augment import DiffAugment
    from dlpipe.training.state import RunFiles

    cfg, arch = params.dcgan.train, params.dcgan.model
    if images is None:
        meta = load_meta()
        images, nc = load_images(TRAIN, meta, device), meta["nc"]
    loader = TensorLoader(images, torch.zeros(len(images), device=device), cfg.batch_size, shuffle=True,
                          seed=params.seed, drop_last=True, transform=to_unit_range, max_batches=cfg.max_batches)

    def make():
        generator, discriminator = build_networks(params, nc, device)
        betas = (cfg.beta1, cfg.beta2)
        return (generator, discriminator, torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=betas),
                torch.optim.Adam(discriminator.parameters(), lr=cfg.lr, betas=betas),
                torch.Generator(device=device).manual_seed(params.seed))

    ours, bare = make(), make()

    # Every sample of either side walks epoch 0's batches: fit_gan(epochs=1) starts at epoch 0.
    def pipeline(epoch: int, **stage_settings) -> None:
        with contextlib.redirect_stderr(io.StringIO()):  # fit_gan's progress bar
            fit_gan(*ours[:4], loader, ours[4], nz=arch.nz, epochs=1, collapse_threshold=cfg.collapse_threshold,
                    collapse_patience=cfg.collapse_patience, files=RunFiles("bench_dcgan"), **stage_settings)

    bare_ema = ema_of(bare[0], cfg.ema_decay, cfg.ema_warmup)

    def plain(epoch: int) -> None:
        bare[0].train()
        bare[1].train()
        bare_gan_epoch(*bare[:4], loader, bare[4], arch.nz, cfg.r1_gamma, cfg.r1_interval, bare_ema)

    # Both sides train as train_dcgan does: what it passes fit_gan beyond the loop's settings (the
    # R1 penalty, the generator's EMA, DiffAugment), and the same R1 and EMA in the bare step.
    augment = DiffAugment(cfg.translation, cfg.cutout, ours[4])
    stage = functools.partial(pipeline, ema_decay=cfg.ema_decay, ema_warmup=cfg.ema_warmup, augment=augment,
                              r1_gamma=cfg.r1_gamma, r1_interval=cfg.r1_interval)
    return Workload("dcgan", epoch_samples(loader), loader.batch_size, stage, plain, device_sync(device),
                    {"pipeline": ours, "bare": bare}, len(loader), stage)


def stage_workload(name: str, params, device: torch.device) -> Workload:
    """The workload of one model, built with its stages' own helpers and the prepared data."""
    from dlpipe.training.schedules import build_optimizer
    from dlpipe.training.tasks import classification, log_price_regression

    if name == "houses":
        from dlpipe.stages import _houses

        cfg = params.houses.train
        loader, _ = _houses.loaders(params, device)
        return loop_workload(name, loader, log_price_regression().loss_fn, lambda: (
            model := _houses.build_model(params, loader, device),
            build_optimizer(model.parameters(), cfg, FIXED_LR[name])), device)
    if name == "lenet":
        from dlpipe.data.classifier_prepared import load_meta
        from dlpipe.stages import _lenet

        meta, cfg = load_meta(), params.lenet.train
        loader = _lenet.train_loader(params.lenet, params.seed, meta, device, capped=False)
        return loop_workload(name, loader, classification().loss_fn, lambda: (
            model := _lenet.build_model(params.lenet, params.seed, len(meta["class_names"]), device),
            build_optimizer(model.parameters(), cfg, FIXED_LR[name])), device)
    if name in ("transfer_head", "transfer_finetune"):
        from dlpipe.data.transfer_images import load_meta
        from dlpipe.stages import _transfer

        classes = len(load_meta()["class_names"])
        head = name == "transfer_head"
        cfg = params.transfer.head.train if head else params.transfer.finetune.train
        loader = _transfer.train_loader(params, cfg, device, capped=False)

        def make():
            # The stages' network; its starting weights do not change its speed, so none are loaded.
            model = _transfer.build_model(params, classes, device).freeze_backbone(head)
            groups = (model.fc.parameters() if head else
                      _transfer.finetune_groups(model, FIXED_LR[name], params.transfer.finetune.lr_spread))
            return model, build_optimizer(groups, cfg, FIXED_LR[name])

        return loop_workload(name, loader, classification().loss_fn, make, device)
    if name == "dcgan":
        return gan_workload(params, device)
    raise ValueError(f"unknown model {name!r}; one of {MODELS}")


def measure(workload: Workload, repeats: int, target_s: float = 1.0) -> dict:
    """Warm both sides (epoch 0), size the samples to about ``target_s``, then alternate.
    Both sides walk the same epochs (the same batches) in the same order."""
    position = {"pipeline": 0, "bare": 0}
    epochs = 1
    fns = {"pipeline": workload.pipeline_epoch, "bare": workload.bare_epoch}

    def side(name: str):
        def run() -> None:
            for _ in range(epochs):
                fns[name](position[name])
                position[name] += 1
            workload.sync()
        return run

    sides = {name: side(name) for name in fns}
    warm = alternate(sides, repeats=1, warmup=1)  # the first round warms up, the second sizes
    epochs = units_per_sample(max(values[0] for values in warm.values()), target_s)
    times = alternate(sides, repeats=repeats, warmup=0)
    record = compare(times, "pipeline", "bare")
    samples = workload.samples_per_epoch * epochs
    record.update({
        "batch_size": workload.batch_size, "epochs_per_sample": epochs, "samples_per_epoch": workload.samples_per_epoch,
        "pipeline_per_s": samples / record["median_s"]["pipeline"], "bare_per_s": samples / record["median_s"]["bare"],
    })
    return record


def loop_overhead(params, device: torch.device, repeats: int, target_s: float = 1.0,
                  models: tuple[str, ...] = MODELS, log: Callable[[str], None] = print) -> dict:
    """{model: measure(...)}; a model whose prepared data is missing is recorded as skipped."""
    from dlpipe.errors import PipelineError

    results = {}
    for name in models:
        try:
            workload = stage_workload(name, params, device)
        except PipelineError as exc:
            results[name] = {"skipped": str(exc)}
            log(f"  loop overhead {name}: skipped ({exc})")
            continue
        results[name] = measure(workload, repeats, target_s)
        r = results[name]
        log(f"  loop overhead {name}: pipeline {r['median_s']['pipeline']:.3f} s, bare {r['median_s']['bare']:.3f} s "
            f"per {r['epochs_per_sample']} epoch(s) -> x{r['ratio']:.3f} ({r['pipeline_per_s']:.0f} vs "
            f"{r['bare_per_s']:.0f} samples/s)")
    return results
