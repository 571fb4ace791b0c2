"""Resumable checkpoints and best-weights files, written atomically.

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
import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch

from dlpipe.errors import PipelineError
from dlpipe.io import atomic_path, sha256_file
from dlpipe.training import faults

log = logging.getLogger(__name__)


PACKAGE_DIR = Path(__file__).resolve().parents[1]


def run_identity(params_part: str, inputs: list[Path], **values) -> str:
    """What a checkpoint must match to be resumed: the params sections, derived
    values (such as an ``lr: auto`` resolved to a number), torch's thread count
    (another count gives other bits), the input files, and the package's code,
    so a finished checkpoint is never reused after any of them changed."""
    digest = hashlib.sha256(params_part.encode())
    values = dict(values, torch_threads=torch.get_num_threads())
    digest.update(json.dumps(values, sort_keys=True, default=str).encode())
    for path in inputs:
        digest.update(sha256_file(path).encode())
    for source in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()


def save(path: str | Path, obj: dict) -> None:
    # Through a file handle: torch.save names the zip's inner folder after a
    # *path* (here a random temp name), which would make equal tensors give
    # different bytes and different DVC hashes.
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        if "epoch" in obj and faults.armed("checkpoint", obj["epoch"]):
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            fh.write(buffer.getvalue()[: buffer.tell() // 2])
            fh.flush()
            os.fsync(fh.fileno())
            faults.kill_now()
        torch.save(obj, fh)


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


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Best weights as a plain state_dict of CPU tensors: loads on any machine
    with ``torch.load(path, weights_only=True)``, no map_location needed."""
    save(path, {key: value.detach().cpu() for key, value in state_dict.items()})


def load_tensors(path: str | Path, producer: str) -> dict[str, torch.Tensor]:
    """A dict of tensors written by stage ``producer``, loaded on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run {producer} first")
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PipelineError(f"{path}: unreadable ({type(exc).__name__}); rerun {producer}") from None
    if not isinstance(tensors, dict):
        raise PipelineError(f"{path}: expected a dict of tensors; rerun {producer}")
    return tensors


def load_state_dict_file(path: str | Path, map_location="cpu") -> dict[str, torch.Tensor]:
    """Load a weights file as a plain state_dict, refusing anything else."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: weights file not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's text is long; the part that says what was refused is its "Unsupported global" line.
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f"pickled code ({refused.group(1)})" if refused else "objects other than tensors"
        raise PipelineError(f"{path}: not a loadable weights file (UnpicklingError): it holds {what}, refused by "
                            "weights_only=True; expected a state_dict of tensors") from None
    except Exception as exc:  # RuntimeError (not a zip/pickle), EOFError (truncated)...
        raise PipelineError(f"{path}: not a loadable weights file ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PipelineError(f"{path}: expected a state_dict (a dict of tensors), got {type(state).__name__}")
    return state


def load_into(model: torch.nn.Module, path: str | Path) -> None:
    """Load a state_dict file into ``model``; mismatched keys or shapes name the file."""
    state = load_state_dict_file(path, map_location=next(model.parameters()).device)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        # torch's first line only names the class; the next ones name the tensors and shapes.
        details = " ".join(line.strip() for line in str(exc).splitlines()[1:] if line.strip())
        raise PipelineError(f"{path}: weights do not fit the model: {details[:400]}") from None


def load_resumable(path: str | Path, params_hash: str) -> dict | None:
    """The checkpoint at ``path`` if it was made with the same params, else None."""
    path = Path(path)
    # A kill while writing leaves its temporary file behind (the rename never
    # happened); the checkpoint itself is the previous epoch's, whole.
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        log.info("removing %s, left by a run killed while writing a checkpoint", stale)
        stale.unlink(missing_ok=True)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        log.warning("checkpoint %s is unreadable (%s); starting afresh", path, type(exc).__name__)
        return None
    if state.get("params_hash") != params_hash:
        log.info("checkpoint %s was made with other params; starting afresh", path)
        return None
    log.info("resuming from %s (epoch %d done)", path, state["epoch"])
    return state
