"""The one training loop every model shares: ``train_one_epoch``, ``evaluate``, ``fit``.

``fit`` keeps the best weights by a monitored validation metric, stops early
after ``patience`` epochs without an improvement of at least ``min_delta``,
writes per-epoch history and a resumable checkpoint each epoch (both through
``state.TrainingState``, which the GAN loop shares). ``train`` is ``fit`` with
the optimizer, schedule and stopping rule of a params ``Train`` section.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch

from dlpipe.config import Train
from dlpipe.errors import PipelineError
from dlpipe.training import faults
from dlpipe.training.accel import OFF, Accel
from dlpipe.training.schedules import build_optimizer, build_scheduler
from dlpipe.training.state import RunFiles, TrainingState

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MetricsFn = Callable[[torch.Tensor, torch.Tensor], dict[str, float]]


@dataclass(frozen=True)
class Task:
    """What to optimise and what to watch."""

    loss_fn: LossFn
    metrics_fn: MetricsFn  # over all validation outputs and targets
    monitor: str  # key of metrics_fn's result that picks the best epoch
    mode: str = "min"  # "min" or "max"
    # A later epoch that only equals the best counts as an improvement. For
    # coarse metrics such as accuracy on a small validation set, ties are
    # common, and under a decaying LR the later weights are the better ones.
    later_ties_win: bool = False

    def improved(self, value: float, best: float | None, min_delta: float) -> bool:
        if best is None:
            return True
        gain = best - value if self.mode == "min" else value - best
        return gain > min_delta or (self.later_ties_win and gain >= min_delta)


@dataclass(frozen=True)
class Optimization:
    """The optimizer and its LR schedule, stepped every batch (one-cycle, cyclic) or every epoch."""

    optimizer: torch.optim.Optimizer
    scheduler: object = None  # an LRScheduler, or None
    per_batch: bool = False


@dataclass(frozen=True)
class Stopping:
    """At most ``epochs``; with ``patience`` > 0, stop after that many epochs in a row
    without an improvement of at least ``min_delta`` of the monitored metric."""

    epochs: int
    patience: int = 0
    min_delta: float = 0.0


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_metric: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    history: list[dict] = field(default_factory=list)


def train_one_epoch(model, loader, loss_fn: LossFn, optimizer, scheduler=None, epoch: int = 0,
                    accel: Accel = OFF, scaler: torch.amp.GradScaler | None = None) -> float:
    """One pass over ``loader``; returns the mean training loss. Steps ``scheduler``
    every batch when given (one-cycle, cyclic). ``accel``: autocast and memory
    format; ``scaler``: float16 loss scaling (its state is the caller's to keep).

    Losses stay on the device until the epoch ends: reading each one (``.item()``,
    or an ``if`` on a tensor) would make the CPU wait for the GPU every step. A
    non-finite loss is therefore found at the end of the epoch; it stops the
    stage naming the first bad step, before this epoch's checkpoint or weights
    are written, so the last good ones are kept.
    """
    model.train()
    if scaler is None:
        scaler = accel.grad_scaler()
    losses, sizes = [], []
    for step, (inputs, targets) in enumerate(loader):
        with accel.autocast():
            loss = loss_fn(model(accel.batch(inputs)), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        faults.kill_if_armed("step", epoch + 1, step + 1)
        losses.append(loss.detach())  # no arithmetic here: each op is a kernel launch per step
        sizes.append(len(targets))
    if not losses:
        return 0.0
    losses = torch.stack(losses).float()
    finite = torch.isfinite(losses)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0])
        raise PipelineError(f"training loss became {losses[first].item()} at epoch {epoch + 1}, step {first + 1}; "
                            "stopped: the last good checkpoint and best weights are kept")
    weights = torch.tensor(sizes, dtype=losses.dtype, device=losses.device)
    return (losses * weights).sum().item() / sum(sizes)


@torch.inference_mode()
def predict(model, loader, accel: Accel = OFF) -> tuple[torch.Tensor, torch.Tensor]:
    """All outputs (float32) and targets of ``loader`` in eval mode (BatchNorm/Dropout frozen)."""
    model.eval()
    outputs, targets = [], []
    for x, y in loader:
        with accel.autocast():
            outputs.append(model(accel.batch(x)).float())
        targets.append(y)
    return torch.cat(outputs), torch.cat(targets)


def evaluate(model, loader, task: Task, accel: Accel = OFF) -> dict[str, float]:
    outputs, targets = predict(model, loader, accel)
    return task.metrics_fn(outputs, targets)


def fit(model: torch.nn.Module, train_loader, val_loader, task: Task, optimization: Optimization,
        stopping: Stopping, files: RunFiles = RunFiles(), accel: Accel = OFF) -> FitResult:
    optimizer, scheduler = optimization.optimizer, optimization.scheduler
    scaler = accel.grad_scaler()
    state = TrainingState(files, {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler},
                          summary=(task.monitor,))
    if not state.resume():
        state.best_state = copy.deepcopy(model.state_dict())

    for epoch in state.epochs(stopping.epochs):
        train_loader.set_epoch(epoch)
        lr = optimizer.param_groups[-1]["lr"]
        train_loss = train_one_epoch(model, train_loader, task.loss_fn, optimizer,
                                     scheduler if optimization.per_batch else None, epoch, accel, scaler)
        if scheduler is not None and not optimization.per_batch:
            scheduler.step()
        metrics = evaluate(model, val_loader, task, accel)
        value = metrics[task.monitor]
        if task.improved(value, state.best_metric, stopping.min_delta):
            state.best_metric, state.best_epoch, state.bad_epochs = value, epoch + 1, 0
            state.best_state = copy.deepcopy(model.state_dict())
        else:
            state.bad_epochs += 1
        state.stopped = bool(stopping.patience) and state.bad_epochs >= stopping.patience
        state.postfix(train_loss=f"{train_loss:.4f}", **{task.monitor: f"{value:.4f}"})
        log.info("%s epoch %d/%d lr %.3g train_loss %.5f %s %.5f", files.name, epoch + 1, stopping.epochs, lr,
                 train_loss, task.monitor, value)
        state.end_epoch([{"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, **metrics}])
        if state.stopped:
            log.info("%s: early stop after epoch %d (best %s %.5f at epoch %d)", files.name, epoch + 1,
                     task.monitor, state.best_metric, state.best_epoch)
    state.finish()
    return FitResult(state.best_state, state.best_metric, state.best_epoch, len(state.history), state.stopped,
                     state.history)


def optimization(parameters: Iterable, cfg: Train, lr: float, steps_per_epoch: int) -> Optimization:
    """The optimizer over ``parameters`` (or param groups) at ``lr`` and the LR schedule of the
    ``Train`` section ``cfg`` (training.schedules) over ``cfg.epochs`` epochs."""
    optimizer = build_optimizer(parameters, cfg, lr)
    scheduler, per_batch = build_scheduler(optimizer, cfg, steps_per_epoch)
    return Optimization(optimizer, scheduler, per_batch)


def train_epochs(model: torch.nn.Module, train_loader, loss_fn: LossFn, optimization: Optimization,
                 epochs: int) -> Iterator[int]:
    """``epochs`` epochs of training with no validation, stopping rule or checkpoint, yielding
    the epoch just done (1-based) after each: the caller reads the model in between."""
    scheduler = optimization.scheduler
    for epoch in range(epochs):
        train_loader.set_epoch(epoch)
        train_one_epoch(model, train_loader, loss_fn, optimization.optimizer,
                        scheduler if optimization.per_batch else None, epoch)
        if scheduler is not None and not optimization.per_batch:
            scheduler.step()
        yield epoch + 1


def train(model: torch.nn.Module, parameters: Iterable, train_loader, val_loader, task: Task, cfg: Train,
          lr: float, files: RunFiles, accel: Accel = OFF) -> FitResult:
    """``fit`` as the training stages run it: ``accel`` applied to ``model``, the optimizer
    and LR schedule of ``optimization``, and the stopping rule of the ``Train`` section ``cfg``."""
    accel.prepare(model)
    return fit(model, train_loader, val_loader, task, optimization(parameters, cfg, lr, len(train_loader)),
               Stopping(cfg.epochs, cfg.patience, cfg.min_delta), files, accel)
