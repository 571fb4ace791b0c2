"""LR range test (Smith, 2017) for every model, on torch-lr-finder's sweep.

torch-lr-finder (davidtvs/pytorch-lr-finder) runs the sweep: exponential or
linear LR steps, loss smoothing, a stop on divergence, and model + optimizer
restored afterwards. This module adds what the pipeline needs on top: our
in-memory loaders, the suggestion rules, and the JSON record that ``lr: auto``
reads.

Rules, all on the recorded (smoothed) curve:
- ``valley`` (fastai's default): the longest stretch over which the loss keeps
  falling, and the LR a half of that stretch past its first third;
- ``steepest``: the most negative slope of loss against log10(LR);
- ``min_div_10``: the LR of the lowest loss, divided by 10.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch_lr_finder import LRFinder, TrainDataLoaderIter

from dlpipe.config import LRFind
from dlpipe.errors import PipelineError
from dlpipe.io import write_json

log = logging.getLogger(__name__)

RULES = ("valley", "steepest", "min_div_10")


class _LoaderIter(TrainDataLoaderIter):
    """Lets torch-lr-finder draw from a TensorLoader; a new epoch order each pass."""

    def __init__(self, loader):
        super().__init__(loader, auto_reset=True)
        self._passes = 0

    def __next__(self):
        try:
            return next(self._iterator)
        except StopIteration:
            self._passes += 1
            self.data_loader.set_epoch(self._passes)
            self._iterator = iter(self.data_loader)
            return next(self._iterator)


def suggest_valley(lrs: np.ndarray, losses: np.ndarray) -> float:
    n = len(losses)
    # run[i]: length of the longest decreasing subsequence that ends at i.
    run = np.ones(n, dtype=int)
    best_start, best_end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[i] > run[best_end]:
            best_end = i
            best_start = best_end - run[best_end]
    third = (best_end - best_start) / 3
    return float(lrs[best_start + int(third) + int(third / 2)])


def suggest_steepest(lrs: np.ndarray, losses: np.ndarray, skip_start: int = 10, skip_end: int = 5) -> float:
    """Skips the noisy first points and the divergence at the end, as torch-lr-finder does."""
    if len(lrs) <= skip_start + skip_end + 2:
        skip_start, skip_end = 0, 0
    window = slice(skip_start, len(lrs) - skip_end)
    slope = np.gradient(losses[window], np.log10(lrs[window]))
    return float(lrs[window][int(np.argmin(slope))])


def suggest_min_div_10(lrs: np.ndarray, losses: np.ndarray) -> float:
    return float(lrs[int(np.argmin(losses))] / 10)


SUGGESTERS = {"valley": suggest_valley, "steepest": suggest_steepest, "min_div_10": suggest_min_div_10}


def range_test(model, optimizer, loss_fn, loader, cfg: LRFind, device: torch.device) -> dict:
    """Sweep the LR, restore model and optimizer, and return the record for JSON."""
    # torch-lr-finder divides the loss in place (gradient accumulation); a clone
    # keeps that off the output of sqrt, whose backward needs it unchanged.
    finder = LRFinder(model, optimizer, lambda out, target: loss_fn(out, target).clone(), device=device)
    # torch-lr-finder prints progress and notes to stdout; keep stage logs tidy.
    with contextlib.redirect_stdout(io.StringIO()):
        finder.range_test(_LoaderIter(loader), start_lr=cfg.start_lr, end_lr=cfg.end_lr,
                          num_iter=cfg.num_iter, step_mode=cfg.step_mode, smooth_f=cfg.smooth,
                          diverge_th=cfg.diverge_threshold)
    finder.reset()  # model weights and optimizer state as they were before the sweep
    lrs = np.asarray(finder.history["lr"], dtype=float)
    losses = np.asarray(finder.history["loss"], dtype=float)
    finite = np.isfinite(losses)
    lrs, losses = lrs[finite], losses[finite]
    if len(lrs) < 5:
        raise PipelineError(f"LR range test: only {len(lrs)} finite losses recorded; "
                            "lower lr_find start_lr or raise diverge_threshold")
    suggestions = {rule: SUGGESTERS[rule](lrs, losses) for rule in RULES}
    return {
        "lrs": lrs.tolist(), "losses": losses.tolist(), "suggestions": suggestions,
        "rule": cfg.rule, "suggested_lr": suggestions[cfg.rule],
        "diverged": bool(len(lrs) < cfg.num_iter), "step_mode": cfg.step_mode,
    }


def save_result(result: dict, json_path: Path) -> None:
    write_json(json_path, result)


def resolve_lr(lr: float | str, json_path: Path, key: str) -> float:
    """A number is used as is; ``auto`` takes the LR range test's suggestion."""
    if lr != "auto":
        return float(lr)
    try:
        record = json.loads(Path(json_path).read_text())
        value = float(record["suggested_lr"])
    except FileNotFoundError:
        raise PipelineError(f"params.yaml: '{key}' is 'auto' but {json_path} does not exist: "
                            "run its lr_find stage first (dvc repro, or set a number)") from None
    except (ValueError, KeyError, TypeError):
        raise PipelineError(f"{json_path}: no numeric 'suggested_lr' (needed by '{key}: auto')") from None
    log.info("%s: auto -> %.4g (rule %s, from %s)", key, value, record.get("rule"), json_path)
    return value
