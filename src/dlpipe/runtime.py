"""Device choice, thread count and seeding: the per-stage runtime set-up."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

from dlpipe.errors import PipelineError

log = logging.getLogger(__name__)


def select_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit choice must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PipelineError(f"params.yaml: 'device': {name!r} requested but no CUDA GPU is available; use 'auto' or 'cpu'")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise PipelineError(
                f"params.yaml: 'device': {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise PipelineError("params.yaml: 'device': 'mps' requested but MPS is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def pin_threads(stage: str, count: int) -> None:
    """Run torch on the declared ``count`` (params.yaml ``threads.<stage>``).

    The engine's grant (Snakemake exports OMP_NUM_THREADS as the rule's
    ``threads``; ``--cores 1`` or a profile's ``set-threads`` can lower or raise
    it) is noted but not followed: float sums split over another number of
    threads differ in the last bits, and a stage's outputs must not depend on
    which engine ran it.
    """
    granted = os.environ.get("OMP_NUM_THREADS", "")
    if granted.isdigit() and int(granted) != count:
        log.info("%s: torch threads %d (params.yaml threads.%s), not the engine's %s: results must not depend "
                 "on the engine", stage, count, stage, granted)
    torch.set_num_threads(count)


def setup(seed: int, device_name: str) -> torch.device:
    """Seed every RNG and choose the device (threads: pin_threads, called by ``python -m dlpipe``)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Deterministic kernels where they exist; warn (not fail) where they do not. The same
    # switch as torch.use_deterministic_algorithms(True, warn_only=True), which also imports
    # torch._inductor (about 2 s of every stage's start) to flag it there: a stage that
    # compiles sets that flag itself (training/accel.py).
    torch.set_deterministic_debug_mode("warn")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return select_device(device_name)
