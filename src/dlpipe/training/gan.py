"""The GAN loop: the DCGAN tutorial's updates, with the shared loop's conventions.

Each step, as the tutorial explains: the discriminator's gradients from a real
batch (label 1) and from a *detached* fake batch (label 0) are accumulated,
then its optimizer steps; then the generator's step sends the same fakes
through the updated discriminator with label 1 (the non-saturating loss) and
only the generator's optimizer steps. The detach keeps the discriminator's
loss from reaching the generator; the separate optimizers keep the
generator's loss from moving the discriminator.

Like ``loop.fit``, through the same ``state.TrainingState``: tqdm over
epochs, a log line per epoch, batches from a TensorLoader (a seeded
permutation per epoch), a per-step history CSV, and an atomic checkpoint
every epoch (both networks, both optimizers, the noise generator, the RNG
states, the history) that a rerun with the same run identity resumes.

Trouble is counted, not hidden: a step whose discriminator output or loss is
not finite skips that optimizer update (``nan_steps``), and a run of ``collapse_patience`` steps in
which D(G(z)) stays under ``collapse_threshold`` (the discriminator wins
completely and the generator learns nothing useful) is logged as a warning and
counted (``d_collapse_steps``, ``d_collapse_longest``, ``d_collapse_alerts``).

Like ``loop.train_one_epoch``, an epoch keeps every step's numbers on the
device and reads them once, at its end (reading one, ``.item()`` or an ``if``
on a tensor, makes the CPU wait for the GPU). The skip needs a step's numbers
before its update, so ``fit_gan`` runs each epoch optimistically, every update
taken, and checks all its steps at the end; if one was not finite (rare:
nothing is otherwise skipped), it restores the state of the epoch's start
from memory and reruns the epoch with the check after every step, which
skips exactly the updates a check per step would have skipped. The collapse
count is taken over the epoch's numbers at its end.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from dlpipe.errors import PipelineError
from dlpipe.training import faults
from dlpipe.training.state import GeneratorState, RunFiles, TrainingState

log = logging.getLogger(__name__)

REAL_LABEL, FAKE_LABEL = 1.0, 0.0
COLUMNS = ("loss_d", "loss_g", "d_x", "d_g_z1", "d_g_z2")  # a step's numbers in the steps CSV
EpochHook = Callable[[int, nn.Module], None]
ImageTransform = Callable[[torch.Tensor], torch.Tensor]  # what D sees of a batch (DiffAugment; identity when off)


def _unchanged(images: torch.Tensor) -> torch.Tensor:
    return images


def r1_penalty(logits: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al., ICML 2018): the mean over the batch of the squared norm
    of the gradient of D's logit with respect to its (real) input. ``create_graph``:
    D's backward differentiates the penalty itself."""
    (grad,) = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def _bce_input(probabilities: torch.Tensor) -> torch.Tensor:
    """D's output as BCELoss may see it: a NaN (which it raises on, on the CPU, and fails a
    device assert on, on CUDA) replaced; the step is skipped then. Finite values and their
    gradients pass unchanged."""
    return probabilities.nan_to_num(0.5)


def _update(optimizer: torch.optim.Optimizer, finite: torch.Tensor, check: bool) -> None:
    """``optimizer.step()``, skipped when ``check`` and the step is not ``finite`` (reading
    ``finite`` waits for the device); without ``check`` the caller checks it later."""
    if not check or bool(finite):
        optimizer.step()


def discriminator_step(generator: nn.Module, discriminator: nn.Module, opt_d: torch.optim.Optimizer,
                       real: torch.Tensor, noise: torch.Tensor, criterion: nn.Module,
                       augment: ImageTransform = _unchanged, r1_gamma: float = 0.0, *, check: bool = True) -> dict:
    """Update D to maximise log D(x) + log(1 - D(G(z))); returns the fakes for the G step
    and the step's numbers as tensors on the device (``finite``: a bool tensor).

    Both forward passes come before both backward passes (the tutorial interleaves
    them): the gradients are the same. A NaN output never reaches BCELoss
    (``_bce_input``); its step reports loss NaN and is not ``finite``.
    ``augment`` (DiffAugment) transforms what D sees, real and fake alike.
    ``r1_gamma`` > 0 adds gamma / 2 x the R1 penalty on the real batch to D's
    loss (D must then offer ``logits``, its output before the Sigmoid): it
    keeps D smooth around the real images, so it cannot learn a small training
    set by heart; ``loss_d`` stays the BCE alone, the penalty is ``r1``.
    ``check``: skip the update of a step that is not finite (one read of the
    device per step); without it the update is always taken (``fit_gan``).
    """
    discriminator.zero_grad(set_to_none=True)
    real_view = augment(real)
    if r1_gamma:
        real_view = real_view.detach().requires_grad_(True)
        logits_real = discriminator.logits(real_view).view(-1)
        output_real = torch.sigmoid(logits_real)  # what D's own Sigmoid computes
    else:
        output_real = discriminator(real_view).view(-1)
    fake = generator(noise)
    output_fake = discriminator(augment(fake.detach())).view(-1)  # detach: no gradient flows into G here
    d_x, d_g_z1 = output_real.mean().detach(), output_fake.mean().detach()
    seen = torch.isfinite(d_x) & torch.isfinite(d_g_z1)
    label = torch.full((real.size(0),), REAL_LABEL, device=real.device)
    loss_real = criterion(_bce_input(output_real), label)
    penalty = r1_gamma / 2 * r1_penalty(logits_real, real_view) if r1_gamma else None
    (loss_real if penalty is None else loss_real + penalty).backward()
    label.fill_(FAKE_LABEL)
    loss_fake = criterion(_bce_input(output_fake), label)
    loss_fake.backward()  # accumulated onto the real batch's gradients, then one step
    loss_d = (loss_real + loss_fake).detach()
    finite = seen & torch.isfinite(loss_d)
    r1 = 0.0
    if penalty is not None:
        r1 = penalty.detach()
        finite = finite & torch.isfinite(r1)
        r1 = torch.where(seen, r1, math.nan)
    _update(opt_d, finite, check)
    return {"fake": fake, "loss_d": torch.where(seen, loss_d, math.nan), "d_x": d_x, "d_g_z1": d_g_z1, "r1": r1,
            "finite": finite}


def generator_step(discriminator: nn.Module, opt_g: torch.optim.Optimizer, fake: torch.Tensor,
                   criterion: nn.Module, augment: ImageTransform = _unchanged, *, check: bool = True) -> dict:
    """Update G to maximise log D(G(z)), through the just-updated D (and the same kind
    of augmentation, which G's gradient passes through); only G's optimizer steps.
    Numbers and ``check`` as in ``discriminator_step``."""
    opt_g.zero_grad(set_to_none=True)
    output = discriminator(augment(fake)).view(-1)
    d_g_z2 = output.mean().detach()
    seen = torch.isfinite(d_g_z2)
    label = torch.full((fake.size(0),), REAL_LABEL, device=fake.device)
    loss = criterion(_bce_input(output), label)
    loss.backward()  # also fills D's .grad; the next D step zeroes it before use
    loss_g = loss.detach()
    finite = seen & torch.isfinite(loss_g)
    _update(opt_g, finite, check)
    return {"loss_g": torch.where(seen, loss_g, math.nan), "d_g_z2": d_g_z2, "finite": finite}


@dataclass
class Watch:
    """Counts non-finite steps and stretches where the discriminator wins completely."""

    threshold: float
    patience: int
    nan_steps: int = 0
    collapse_steps: int = 0
    run: int = 0
    longest: int = 0
    alerts: int = 0

    def update(self, record: dict) -> None:
        if not (math.isfinite(record["loss_d"]) and math.isfinite(record["loss_g"])):
            self.nan_steps += 1
            log.warning("step %d (epoch %d): loss D %s, loss G %s: that update was skipped",
                        record["step"], record["epoch"], record["loss_d"], record["loss_g"])
        if record["d_g_z2"] < self.threshold:  # NaN compares False: counted above, not here
            self.collapse_steps += 1
            self.run += 1
            self.longest = max(self.longest, self.run)
            if self.run == self.patience:
                self.alerts += 1
                log.warning("the discriminator has won completely for %d steps (D(G(z)) < %g since step %d)",
                            self.run, self.threshold, record["step"] - self.run + 1)
        else:
            self.run = 0

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("nan_steps", "collapse_steps", "run", "longest", "alerts")}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class GanResult:
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    watch: dict = field(default_factory=dict)
    sampler: nn.Module | None = None  # the generator to draw samples with: its EMA, or itself


def warming_ema(decay: float):
    """AveragedModel's update with a decay that grows with the updates made, n:
    min(decay, (1 + n) / (10 + n)), so the average spans about the last tenth of the
    steps until it reaches ``decay`` (at n = 8,990 for 0.999). With a fixed 0.999 the
    weights of the first epochs, far from any good generator, still weigh in thousands
    of steps later."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        n = int(updates)  # AveragedModel reads its count on the host at every update already
        get_ema_multi_avg_fn(min(decay, (1 + n) / (10 + n)))(averaged, current, updates)

    return update


def ema_of(generator: nn.Module, decay: float, warmup: bool = False) -> AveragedModel | None:
    """An exponential moving average of the generator's weights (and BatchNorm buffers),
    updated after every generator step; ``decay`` 0 = none. Averaging the last few
    hundred steps smooths out the oscillation of adversarial training; ``warmup``
    lets the decay grow to ``decay`` with the steps (warming_ema)."""
    if not decay:
        return None
    average = warming_ema(decay) if warmup else get_ema_multi_avg_fn(decay)
    return AveragedModel(generator, multi_avg_fn=average, use_buffers=True)


def epoch_means(rows: list[dict]) -> dict[str, float]:
    """Means of the finite values of each per-step column (NaN when none is finite)."""
    out = {}
    for key in COLUMNS:
        values = [row[key] for row in rows if math.isfinite(row[key])]
        out[key] = sum(values) / len(values) if values else math.nan
    return out


def fit_gan(
    generator: nn.Module,
    discriminator: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    loader,
    noise_generator: torch.Generator,
    *,
    nz: int,
    epochs: int,
    collapse_threshold: float,
    collapse_patience: int,
    files: RunFiles = RunFiles("train_gan"),
    on_epoch_end: EpochHook | None = None,
    ema_decay: float = 0.0,
    ema_warmup: bool = False,
    augment: ImageTransform = _unchanged,
    r1_gamma: float = 0.0,
    r1_interval: int = 1,
) -> GanResult:
    """Train both networks for ``epochs``; ``noise_generator`` (on the training
    device) draws every latent batch (and ``augment``'s shifts, when it is a
    DiffAugment built on it), so its state is what a resume restores."""
    criterion = nn.BCELoss()
    watch = Watch(collapse_threshold, collapse_patience)
    ema = ema_of(generator, ema_decay, ema_warmup)
    sampler = generator if ema is None else ema.module
    state = TrainingState(files, {"generator": generator, "discriminator": discriminator, "opt_g": opt_g,
                                  "opt_d": opt_d, "noise_rng": GeneratorState(noise_generator), "watch": watch,
                                  "ema": ema}, summary=("loss_g",))
    state.resume()
    start = state.epoch
    device = next(generator.parameters()).device

    def run_epoch(epoch: int, check: bool) -> tuple[list[list[float]], bool]:
        """The epoch's steps: their numbers (rows of COLUMNS), read once at the end, and
        whether every step was finite."""
        loader.set_epoch(epoch)
        done = len(state.history)
        numbers, finite = [], []
        for step, (real, _) in enumerate(loader):
            noise = torch.randn(real.size(0), nz, 1, 1, device=device, generator=noise_generator)
            # Lazy R1 (Karras et al. 2020): every r1_interval-th step, scaled by the interval.
            r1_now = r1_gamma * r1_interval if (done + step) % r1_interval == 0 else 0.0
            d = discriminator_step(generator, discriminator, opt_d, real, noise, criterion, augment, r1_now,
                                   check=check)
            g = generator_step(discriminator, opt_g, d["fake"], criterion, augment, check=check)
            if ema is not None:
                ema.update_parameters(generator)
            numbers.extend((d["loss_d"], g["loss_g"], d["d_x"], d["d_g_z1"], g["d_g_z2"]))  # no arithmetic here
            finite.extend((d["finite"], g["finite"]))
            faults.kill_if_armed("step", epoch + 1, step + 1)
        if not numbers:
            return [], True
        read = torch.cat([torch.stack(numbers), torch.stack(finite).to(numbers[0].dtype)]).tolist()
        count = len(numbers)
        return [read[i:i + len(COLUMNS)] for i in range(0, count, len(COLUMNS))], all(read[count:])

    generator.train()
    discriminator.train()
    for epoch in state.epochs(epochs):
        start_of_epoch = state.snapshot()
        steps, all_finite = run_epoch(epoch, check=False)
        if not all_finite:
            log.warning("%s: epoch %d had a step that was not finite; rerunning it from its start with a check "
                        "after every step, which skips such a step's update", files.name, epoch + 1)
            state.restore(start_of_epoch)
            steps, _ = run_epoch(epoch, check=True)
        done = len(state.history)
        rows = [{"step": done + i + 1, "epoch": epoch + 1, **dict(zip(COLUMNS, values))}
                for i, values in enumerate(steps)]
        for row in rows:
            watch.update(row)
        if rows and not any(math.isfinite(r["loss_d"]) or math.isfinite(r["loss_g"]) for r in rows):
            raise PipelineError(f"{files.name}: every loss of epoch {epoch + 1} was NaN or infinite; the last good "
                                f"checkpoint ({files.checkpoint}) is kept")
        means = epoch_means(rows)
        state.postfix(loss_d=f"{means['loss_d']:.3f}", loss_g=f"{means['loss_g']:.3f}")
        log.info("%s epoch %d/%d loss_d %.4f loss_g %.4f D(x) %.3f D(G(z)) %.3f/%.3f nan_steps %d "
                 "d_collapse_steps %d", files.name, epoch + 1, epochs, means["loss_d"], means["loss_g"],
                 means["d_x"], means["d_g_z1"], means["d_g_z2"], watch.nan_steps, watch.collapse_steps)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, sampler)
        state.end_epoch(rows)
    state.finish()
    return GanResult(max(epochs - start, 0), state.history, watch.state_dict(), sampler)
