"""Fault points for the interruption tests: ``DLPIPE_FAULT`` kills the process
with SIGKILL at a chosen point of training, as a power cut or an OOM killer
would, so a test can prove that the rerun finishes with the weights of an
uninterrupted run; with a ``sigint:`` prefix it sends the process SIGINT
instead, as Ctrl-C does, and training goes on until the signal is acted on.

    DLPIPE_FAULT=step:2:3          after the optimizer step of epoch 2, batch 3
    DLPIPE_FAULT=checkpoint:2      halfway through writing epoch 2's checkpoint
    DLPIPE_FAULT=epoch_end:2       right after epoch 2's checkpoint is on disk
    DLPIPE_FAULT=sigint:step:2:1   Ctrl-C after the optimizer step of epoch 2, batch 1
    DLPIPE_FAULT=sigint:checkpoint:2   Ctrl-C halfway through writing epoch 2's checkpoint

Epochs and steps count from 1. Unset (always, outside tests) it costs one
environment lookup per call.
"""

from __future__ import annotations

import os
import signal

ENV = "DLPIPE_FAULT"
SIGINT = "sigint:"


def armed(point: str, epoch: int, step: int | None = None, how: str = "") -> bool:
    """Whether ``DLPIPE_FAULT`` names this point of training, with the prefix ``how``
    ("": SIGKILL, ``SIGINT``)."""
    spec = os.environ.get(ENV)
    if not spec:
        return False
    here = ":".join(str(part) for part in (point, epoch, step) if part is not None)
    return spec == how + here


def kill_if_armed(point: str, epoch: int, step: int | None = None) -> None:
    """SIGKILL, or SIGINT, to this process when ``DLPIPE_FAULT`` names this point."""
    if armed(point, epoch, step):
        kill_now()
    elif armed(point, epoch, step, SIGINT):
        os.kill(os.getpid(), signal.SIGINT)


def kill_now() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
