"""Resumable checkpoints, written atomically, and the identity they are resumed by.

A checkpoint carries the hash of the params it was started with: a rerun with
the same params continues from it, a rerun with other params starts afresh.
Everything in it is tensors and plain Python values, so it loads with
``weights_only=True`` (no pickled code is ever executed).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from dlpipe.errors import excerpt
from dlpipe.io import atomic_path, sha256_file, sweep_stale
from dlpipe.signals import sigint_deferred
from dlpipe.tensor_io import save_tensors
from dlpipe.training import faults

log = logging.getLogger(__name__)


def run_identity(stage_module: str, params, inputs: list[Path], **values) -> str:
    """What a checkpoint must match to be resumed: the params keys the stage
    declares (its ``STAGE``), derived values (such as an ``lr: auto`` resolved
    to a number), torch's thread count (another count gives other bits), the
    input files, and the code the stage runs (the closure of its imports, as in
    its dvc.yaml deps), so a finished checkpoint is never reused after any of
    them changed, and an edit elsewhere in the package keeps it.
    ``stage_module``: the stage's ``__name__``."""
    from dlpipe import declare

    spec = sys.modules[stage_module].STAGE
    digest = hashlib.sha256(params.section_hash(*spec.params).encode())
    values = dict(values, torch_threads=torch.get_num_threads())
    digest.update(json.dumps(values, sort_keys=True, default=str).encode())
    for path in inputs:
        digest.update(sha256_file(path).encode())
    for source in declare.code_files(stage_module):
        digest.update(source.read_bytes())
    return digest.hexdigest()


# The checkpoint this process last wrote or resumed from: (path, epochs done); None: none.
# What an interrupted stage says is kept (python -m dlpipe on Ctrl-C).
_kept: tuple[Path, int] | None = None


def last_kept() -> tuple[Path, int] | None:
    return _kept


def save(path: str | Path, obj: dict) -> None:
    """A resumable checkpoint, written atomically (dlpipe.tensor_io) and at once: it is
    progress, never held back with a stage's outputs (``io.outputs_together``). Ctrl-C
    during the write waits until it is whole. The fault points of the interruption tests
    sit here, not in the tensor I/O every stage uses."""
    global _kept
    epoch = obj.get("epoch")
    with sigint_deferred():
        if epoch is not None and (faults.armed("checkpoint", epoch) or
                                  faults.armed("checkpoint", epoch, how=faults.SIGINT)):
            with atomic_path(path, immediate=True) as tmp, open(tmp, "wb") as fh:
                buffer = io.BytesIO()
                torch.save(obj, buffer)
                data = buffer.getvalue()
                fh.write(data[: len(data) // 2])
                fh.flush()
                os.fsync(fh.fileno())
                faults.kill_if_armed("checkpoint", epoch)  # SIGKILL here, or a SIGINT that waits
                fh.write(data[len(data) // 2:])
        else:
            save_tensors(path, obj, immediate=True)
        if epoch is not None:
            _kept = (Path(path), epoch)


def rng_states() -> dict:
    """Every RNG a training step may draw from: torch's CPU and CUDA generators,
    Python's and NumPy's (as tensors and plain values, so ``weights_only`` loads them)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    saved = states["numpy"]
    np.random.set_state((saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["pos"],
                         saved["has_gauss"], saved["cached_gaussian"]))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def load_resumable(path: str | Path, params_hash: str) -> dict | None:
    """The checkpoint at ``path`` if it was made with the same params, else None."""
    global _kept
    path = Path(path)
    # A kill while writing leaves its temporary file behind (the rename never
    # happened); the checkpoint itself is the previous epoch's, whole. Only those of
    # processes gone are removed: another run may be writing its own right now.
    for stale in sweep_stale(path.parent, f".{path.name}."):
        log.info("removed %s, left by a run killed while writing a checkpoint", stale)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        set_aside(path, f"unreadable: {type(exc).__name__}")
        return None
    if not isinstance(state, dict):
        set_aside(path, f"a {type(state).__name__}, not a dict")
        return None
    if state.get("params_hash") != params_hash:
        log.info("checkpoint %s was made with other params; starting afresh", path)
        return None
    if not isinstance(state.get("epoch"), int) or isinstance(state["epoch"], bool) or state["epoch"] < 0:
        set_aside(path, f"'epoch' is {excerpt(repr(state.get('epoch')))}, expected a count")
        return None
    log.info("resuming from %s (epoch %d done)", path, state["epoch"])
    _kept = (path, state["epoch"])
    return state


def set_aside(path: Path, why: str) -> Path:
    """Move a checkpoint that cannot be resumed to ``<name>.malformed`` (replacing an older
    one), so that training starts afresh and the file stays for a look."""
    global _kept
    target = path.with_name(path.name + ".malformed")
    os.replace(path, target)
    log.warning("checkpoint %s cannot be resumed (%s): set aside as %s; training starts afresh", path, why, target)
    if _kept is not None and _kept[0] == path:
        _kept = None
    return target
