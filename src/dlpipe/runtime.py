"""Device choice, thread count and seeding: the per-stage runtime set-up."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from dlpipe.errors import PipelineError


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


def stage_threads(configured: int) -> int:
    """Threads for this stage: the engine's grant (Snakemake exports OMP_NUM_THREADS
    as the rule's ``threads``), else params ``threads``, else every core."""
    granted = os.environ.get("OMP_NUM_THREADS", "")
    if granted.isdigit() and int(granted) > 0:
        return int(granted)
    return configured if configured > 0 else (os.cpu_count() or 1)


def setup(seed: int, device_name: str, threads: int) -> torch.device:
    """Seed every RNG, pin torch's thread count and choose the device."""
    torch.set_num_threads(stage_threads(threads))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Deterministic kernels where they exist; warn (not fail) where they do not.
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return select_device(device_name)
