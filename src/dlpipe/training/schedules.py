"""Optimizers and LR schedules from a ``Train`` params section (torch's own classes)."""

from __future__ import annotations

from typing import Iterable

import torch
from torch.optim.lr_scheduler import CyclicLR, LRScheduler, OneCycleLR, StepLR

from dlpipe.config import SGD, StepSchedule, Train


def build_optimizer(param_groups: Iterable, cfg: Train, lr: float) -> torch.optim.Optimizer:
    """``param_groups``: parameters, or dicts with their own ``lr`` (discriminative LRs)."""
    chosen = cfg.optimizer
    if isinstance(chosen, SGD):
        return torch.optim.SGD(param_groups, lr=lr, momentum=chosen.momentum, weight_decay=chosen.weight_decay)
    if chosen.name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=chosen.weight_decay)
    return torch.optim.Adam(param_groups, lr=lr, weight_decay=chosen.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: Train, steps_per_epoch: int
) -> tuple[LRScheduler | None, bool]:
    """Return (scheduler, steps_per_batch). One-cycle and cyclic step every batch;
    step decay every epoch; ``constant`` has none. Peak LRs are the groups' own."""
    max_lrs = [group["lr"] for group in optimizer.param_groups]
    schedule = cfg.schedule
    if schedule.name == "onecycle":
        return OneCycleLR(optimizer, max_lr=max_lrs, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch), True
    if schedule.name == "cyclic":
        # Triangular cycles between lr/10 and lr, half a cycle = 2 epochs (Smith, 2017).
        momentum = isinstance(cfg.optimizer, SGD)
        return CyclicLR(optimizer, base_lr=[lr / 10 for lr in max_lrs], max_lr=max_lrs,
                        step_size_up=2 * steps_per_epoch, cycle_momentum=momentum), True
    if isinstance(schedule, StepSchedule):
        return StepLR(optimizer, step_size=schedule.step_size, gamma=schedule.gamma), False
    return None, False
