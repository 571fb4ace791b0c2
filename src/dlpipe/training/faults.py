"""Fault points for the interruption tests: ``DLPIPE_FAULT`` kills the process
with SIGKILL at a chosen point of training, as a power cut or an OOM killer
would, so a test can prove that the rerun finishes with the weights of an
uninterrupted run.

    DLPIPE_FAULT=step:2:3       after the optimizer step of epoch 2, batch 3
    DLPIPE_FAULT=checkpoint:2   halfway through writing epoch 2's checkpoint
    DLPIPE_FAULT=epoch_end:2    right after epoch 2's checkpoint is on disk

Epochs and steps count from 1. Unset (always, outside tests) it costs one
environment lookup per call.
"""

from __future__ import annotations

import os
import signal

ENV = "DLPIPE_FAULT"


def armed(point: str, epoch: int, step: int | None = None) -> bool:
    """Whether ``DLPIPE_FAULT`` names this point of training."""
    spec = os.environ.get(ENV)
    if not spec:
        return False
    here = ":".join(str(part) for part in (point, epoch, step) if part is not None)
    return spec == here


def kill_if_armed(point: str, epoch: int, step: int | None = None) -> None:
    if armed(point, epoch, step):
        os.kill(os.getpid(), signal.SIGKILL)


def kill_now() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
