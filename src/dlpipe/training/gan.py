"""The GAN loop: the seed's DCGAN updates, with the shared loop's conventions.

Each step, as the seed explains: the discriminator's gradients from a real
batch (label 1) and from a *detached* fake batch (label 0) are accumulated,
then its optimizer steps; then the generator's step sends the same fakes
through the updated discriminator with label 1 (the non-saturating loss) and
only the generator's optimizer steps. The detach keeps the discriminator's
loss from reaching the generator; the separate optimizers keep the
generator's loss from moving the discriminator.

Like ``loop.fit``: tqdm over epochs, a log line per epoch, batches from a
TensorLoader (a seeded permutation per epoch), a per-step history CSV, and
an atomic checkpoint every epoch (both networks, both optimizers, the RNG
states, the history) that a rerun with the same run identity resumes.

Trouble is counted, not hidden: a step whose discriminator output or loss is
not finite skips that optimizer update (``nan_steps``), and a run of ``collapse_patience`` steps in
which D(G(z)) stays under ``collapse_threshold`` (the discriminator wins
completely and the generator learns nothing useful) is logged as a warning and
counted (``d_collapse_steps``, ``d_collapse_longest``, ``d_collapse_alerts``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from dlpipe.errors import PipelineError
from dlpipe.training import checkpoint, faults
from dlpipe.training.loop import write_history

log = logging.getLogger(__name__)

REAL_LABEL, FAKE_LABEL = 1.0, 0.0
EpochHook = Callable[[int, nn.Module], None]
Augment = Callable[[torch.Tensor], torch.Tensor]


def _unchanged(images: torch.Tensor) -> torch.Tensor:
    return images


def r1_penalty(logits: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al., ICML 2018): the mean over the batch of the squared norm
    of the gradient of D's logit with respect to its (real) input. ``create_graph``:
    D's backward differentiates the penalty itself."""
    (grad,) = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def discriminator_step(generator: nn.Module, discriminator: nn.Module, opt_d: torch.optim.Optimizer,
                       real: torch.Tensor, noise: torch.Tensor, criterion: nn.Module,
                       augment: Augment = _unchanged, r1_gamma: float = 0.0) -> dict:
    """Update D to maximise log D(x) + log(1 - D(G(z))); returns the fakes for the G step.

    Both forward passes come before both backward passes (the seed interleaves
    them): the gradients are the same, and a NaN output is caught before
    BCELoss sees it (it raises on the CPU, and fails a device assert on CUDA).
    ``augment`` (DiffAugment) transforms what D sees, real and fake alike.
    ``r1_gamma`` > 0 adds gamma / 2 x the R1 penalty on the real batch to D's
    loss (D must then offer ``logits``, its output before the Sigmoid): it
    keeps D smooth around the real images, so it cannot learn a small training
    set by heart; ``loss_d`` stays the BCE alone, the penalty is ``r1``.
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
    d_x, d_g_z1 = output_real.mean().item(), output_fake.mean().item()
    if not (math.isfinite(d_x) and math.isfinite(d_g_z1)):
        return {"fake": fake, "loss_d": math.nan, "d_x": d_x, "d_g_z1": d_g_z1, "r1": math.nan, "finite": False}
    label = torch.full((real.size(0),), REAL_LABEL, device=real.device)
    loss_real = criterion(output_real, label)
    penalty = r1_gamma / 2 * r1_penalty(logits_real, real_view) if r1_gamma else None
    (loss_real if penalty is None else loss_real + penalty).backward()
    label.fill_(FAKE_LABEL)
    loss_fake = criterion(output_fake, label)
    loss_fake.backward()  # accumulated onto the real batch's gradients, then one step
    loss_d = (loss_real + loss_fake).item()
    r1 = penalty.item() if penalty is not None else 0.0
    finite = math.isfinite(loss_d) and math.isfinite(r1)
    if finite:
        opt_d.step()
    return {"fake": fake, "loss_d": loss_d, "d_x": d_x, "d_g_z1": d_g_z1, "r1": r1, "finite": finite}


def generator_step(discriminator: nn.Module, opt_g: torch.optim.Optimizer, fake: torch.Tensor,
                   criterion: nn.Module, augment: Augment = _unchanged) -> dict:
    """Update G to maximise log D(G(z)), through the just-updated D (and the same kind
    of augmentation, which G's gradient passes through); only G's optimizer steps."""
    opt_g.zero_grad(set_to_none=True)
    output = discriminator(augment(fake)).view(-1)
    d_g_z2 = output.mean().item()
    if not math.isfinite(d_g_z2):
        return {"loss_g": math.nan, "d_g_z2": d_g_z2, "finite": False}
    label = torch.full((fake.size(0),), REAL_LABEL, device=fake.device)
    loss = criterion(output, label)
    loss.backward()  # also fills D's .grad; the next D step zeroes it before use
    loss_g = loss.item()
    finite = math.isfinite(loss_g)
    if finite:
        opt_g.step()
    return {"loss_g": loss_g, "d_g_z2": d_g_z2, "finite": finite}


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

    def state(self) -> dict:
        return {k: getattr(self, k) for k in ("nan_steps", "collapse_steps", "run", "longest", "alerts")}

    def load(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class GanResult:
    epochs_run: int
    history: list[dict] = field(default_factory=list)
    watch: dict = field(default_factory=dict)
    sampler: nn.Module | None = None  # the generator to draw samples with: its EMA, or itself


def ema_of(generator: nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of the generator's weights (and BatchNorm buffers),
    updated after every generator step; ``decay`` 0 = none. Averaging the last few
    hundred steps smooths out the oscillation of adversarial training."""
    if not decay:
        return None
    return AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def epoch_means(rows: list[dict]) -> dict[str, float]:
    """Means of the finite values of each per-step column (NaN when none is finite)."""
    out = {}
    for key in ("loss_d", "loss_g", "d_x", "d_g_z1", "d_g_z2"):
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
    checkpoint_path: Path | None = None,
    params_hash: str = "",
    history_path: Path | None = None,
    on_epoch_end: EpochHook | None = None,
    name: str = "train_gan",
    ema_decay: float = 0.0,
    augment: Augment = _unchanged,
    r1_gamma: float = 0.0,
    r1_interval: int = 1,
) -> GanResult:
    """Train both networks for ``epochs``; ``noise_generator`` (on the training
    device) draws every latent batch (and ``augment``'s shifts, when it is a
    DiffAugment built on it), so its state is what a resume restores."""
    criterion = nn.BCELoss()
    watch = Watch(collapse_threshold, collapse_patience)
    ema = ema_of(generator, ema_decay)
    state = checkpoint.load_resumable(checkpoint_path, params_hash) if checkpoint_path else None
    if state:
        generator.load_state_dict(state["generator"])
        discriminator.load_state_dict(state["discriminator"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        checkpoint.restore_rng_states(state["rng"])
        noise_generator.set_state(state["noise_rng"])
        start, history = state["epoch"], state["history"]
        watch.load(state["watch"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
    else:
        start, history = 0, []
    device = next(generator.parameters()).device

    generator.train()
    discriminator.train()
    bar = tqdm(range(start, epochs), desc=name, unit="epoch", initial=start, total=epochs, mininterval=1.0)
    for epoch in bar:
        loader.set_epoch(epoch)
        rows = []
        for real, _ in loader:
            noise = torch.randn(real.size(0), nz, 1, 1, device=device, generator=noise_generator)
            # Lazy R1 (Karras et al. 2020): every r1_interval-th step, scaled by the interval.
            step_index = len(history) + len(rows)
            r1_now = r1_gamma * r1_interval if step_index % r1_interval == 0 else 0.0
            d = discriminator_step(generator, discriminator, opt_d, real, noise, criterion, augment, r1_now)
            g = generator_step(discriminator, opt_g, d["fake"], criterion, augment)
            if ema is not None:
                ema.update_parameters(generator)
            record = {"step": len(history) + len(rows) + 1, "epoch": epoch + 1, "loss_d": d["loss_d"],
                      "loss_g": g["loss_g"], "d_x": d["d_x"], "d_g_z1": d["d_g_z1"], "d_g_z2": g["d_g_z2"]}
            watch.update(record)
            rows.append(record)
            faults.kill_if_armed("step", epoch + 1, len(rows))
        if rows and not any(math.isfinite(r["loss_d"]) or math.isfinite(r["loss_g"]) for r in rows):
            raise PipelineError(f"{name}: every loss of epoch {epoch + 1} was NaN or infinite; the last good "
                                f"checkpoint ({checkpoint_path}) is kept")
        history.extend(rows)
        means = epoch_means(rows)
        bar.set_postfix(loss_d=f"{means['loss_d']:.3f}", loss_g=f"{means['loss_g']:.3f}")
        log.info("%s epoch %d/%d loss_d %.4f loss_g %.4f D(x) %.3f D(G(z)) %.3f/%.3f nan_steps %d "
                 "d_collapse_steps %d", name, epoch + 1, epochs, means["loss_d"], means["loss_g"], means["d_x"],
                 means["d_g_z1"], means["d_g_z2"], watch.nan_steps, watch.collapse_steps)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, generator if ema is None else ema.module)
        if history_path:
            write_history(history_path, history)
        if checkpoint_path:
            checkpoint.save(checkpoint_path, {
                "params_hash": params_hash, "epoch": epoch + 1,
                "generator": generator.state_dict(), "discriminator": discriminator.state_dict(),
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                "rng": checkpoint.rng_states(), "noise_rng": noise_generator.get_state(),
                "history": history, "watch": watch.state(), "ema": ema.state_dict() if ema is not None else {},
            })
            faults.kill_if_armed("epoch_end", epoch + 1)
    if history_path and history:
        write_history(history_path, history)
    return GanResult(max(epochs - start, 0), history, watch.state(), generator if ema is None else ema.module)
