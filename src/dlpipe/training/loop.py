"""The one training loop every model shares: ``train_one_epoch``, ``evaluate``, ``fit``.

``fit`` keeps the best weights by a monitored validation metric, stops early
after ``patience`` epochs without an improvement of at least ``min_delta``,
writes per-epoch history and a resumable checkpoint each epoch.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from dlpipe.errors import PipelineError
from dlpipe.io import write_text
from dlpipe.training import checkpoint, faults
from dlpipe.training.accel import OFF, Accel

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


def write_history(path: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text(path, buffer.getvalue())


def fit(
    model: torch.nn.Module,
    train_loader,
    val_loader,
    task: Task,
    optimizer: torch.optim.Optimizer,
    scheduler=None,
    scheduler_per_batch: bool = False,
    *,
    epochs: int,
    patience: int = 0,
    min_delta: float = 0.0,
    checkpoint_path: Path | None = None,
    params_hash: str = "",
    history_path: Path | None = None,
    name: str = "train",
    accel: Accel = OFF,
) -> FitResult:
    scaler = accel.grad_scaler()
    state = checkpoint.load_resumable(checkpoint_path, params_hash) if checkpoint_path else None
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        checkpoint.restore_rng_states(state["rng"])
        start, best_metric, best_epoch = state["epoch"], state["best_metric"], state["best_epoch"]
        best_state, bad_epochs, history = state["best_state"], state["bad_epochs"], state["history"]
        stopped = state["stopped"]
    else:
        start, best_metric, best_epoch, bad_epochs, history, stopped = 0, None, 0, 0, [], False
        best_state = copy.deepcopy(model.state_dict())

    bar = tqdm(range(start, epochs), desc=name, unit="epoch", initial=start, total=epochs,
               disable=stopped, mininterval=1.0)
    for epoch in bar:
        if stopped:
            break
        train_loader.set_epoch(epoch)
        lr = optimizer.param_groups[-1]["lr"]
        train_loss = train_one_epoch(model, train_loader, task.loss_fn, optimizer,
                                     scheduler if scheduler_per_batch else None, epoch, accel, scaler)
        if scheduler is not None and not scheduler_per_batch:
            scheduler.step()
        metrics = evaluate(model, val_loader, task, accel)
        value = metrics[task.monitor]
        if task.improved(value, best_metric, min_delta):
            best_metric, best_epoch, bad_epochs = value, epoch + 1, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
        stopped = bool(patience) and bad_epochs >= patience
        history.append({"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, **metrics})
        bar.set_postfix(train_loss=f"{train_loss:.4f}", **{task.monitor: f"{value:.4f}"})
        log.info("%s epoch %d/%d lr %.3g train_loss %.5f %s %.5f", name, epoch + 1, epochs, lr,
                 train_loss, task.monitor, value)
        if history_path:
            write_history(history_path, history)
        if checkpoint_path:
            checkpoint.save(checkpoint_path, {
                "params_hash": params_hash, "epoch": epoch + 1, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else {},
                "scaler": scaler.state_dict(), "rng": checkpoint.rng_states(), "best_metric": best_metric, "best_epoch": best_epoch,
                "best_state": best_state, "bad_epochs": bad_epochs, "history": history, "stopped": stopped,
            })
            faults.kill_if_armed("epoch_end", epoch + 1)
        if stopped:
            log.info("%s: early stop after epoch %d (best %s %.5f at epoch %d)", name, epoch + 1,
                     task.monitor, best_metric, best_epoch)
    if history_path and history:
        write_history(history_path, history)
    return FitResult(best_state, best_metric, best_epoch, len(history), stopped, history)
