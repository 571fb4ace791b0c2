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
- ``min_div_10``: the LR of the lowest loss (past the first SKIP_START points),
  divided by 10.

Every rule's pick then passes one guard: a pick at or beyond the LR of the
lowest loss, where the loss already rises toward divergence, is replaced by
that LR / 10 (``min_div_10``'s pick, a decade below the minimum). The steepest
slope and the longest descent can both land there on a noisy curve: the fall
back from a spike just past the minimum can be the steepest slope, and a loss
recovering from a spike the longest descent. Of the fall-backs, the minimum / 10
is always below the minimum by a fixed factor, where another rule's pick may
itself lie past it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch_lr_finder import LRFinder, TrainDataLoaderIter

from dlpipe.config import LRRangeTest
from dlpipe.errors import PipelineError
from dlpipe.layouts import NUMBER, TEXT, JsonFile, array, record

log = logging.getLogger(__name__)

RULES = ("valley", "steepest", "min_div_10")
# Points skipped at the start and at the end, as torch-lr-finder's plot does: the
# smoothed loss starts at one batch's loss (so the first points say little), and
# the last ones are the divergence.
SKIP_START, SKIP_END = 10, 5
# Rules whose picks span more than this factor (largest / smallest) disagree: the
# curve has no clear descent, and ``lr: auto`` deserves a look at it.
DISAGREEMENT_FACTOR = 10.0


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


def _skips(n: int) -> tuple[int, int]:
    """(SKIP_START, SKIP_END), or no skips on a curve too short to spare them (tiny runs)."""
    return (SKIP_START, SKIP_END) if n > SKIP_START + SKIP_END + 2 else (0, 0)


def suggest_steepest(lrs: np.ndarray, losses: np.ndarray) -> float:
    """Skips the noisy first points and the divergence at the end, as torch-lr-finder does."""
    skip_start, skip_end = _skips(len(lrs))
    window = slice(skip_start, len(lrs) - skip_end)
    slope = np.gradient(losses[window], np.log10(lrs[window]))
    return float(lrs[window][int(np.argmin(slope))])


def lr_at_min(lrs: np.ndarray, losses: np.ndarray) -> float:
    """The LR of the lowest smoothed loss, past the first SKIP_START points: a low first
    batch would otherwise make the curve's start its minimum, though the loss never fell."""
    skip_start, _ = _skips(len(lrs))
    return float(lrs[skip_start + int(np.argmin(losses[skip_start:]))])


def suggest_min_div_10(lrs: np.ndarray, losses: np.ndarray) -> float:
    return lr_at_min(lrs, losses) / 10


def below_min(pick: float, lrs: np.ndarray, losses: np.ndarray) -> float:
    """The guard every rule's pick passes (module docstring): kept if below the LR of
    the lowest loss, else that LR / 10."""
    return pick if pick < lr_at_min(lrs, losses) else suggest_min_div_10(lrs, losses)


SUGGESTERS = {"valley": suggest_valley, "steepest": suggest_steepest, "min_div_10": suggest_min_div_10}


def _scale_groups(optimizer, ratios: Sequence[float]) -> list:
    """Hooks that run each step with group i at ``ratios[i]`` x the LR torch-lr-finder
    set (it sets one LR for all groups), then put that LR back for its scheduler."""
    if len(ratios) != len(optimizer.param_groups):
        raise ValueError(f"{len(ratios)} LR ratios for {len(optimizer.param_groups)} parameter groups")
    swept: list[float] = []

    def scale(opt, args, kwargs):
        swept[:] = [group["lr"] for group in opt.param_groups]
        for group, ratio in zip(opt.param_groups, ratios):
            group["lr"] = group["lr"] * ratio

    def restore(opt, args, kwargs):
        for group, lr in zip(opt.param_groups, swept):
            group["lr"] = lr

    return [optimizer.register_step_pre_hook(scale), optimizer.register_step_post_hook(restore)]


def range_test(model, optimizer, loss_fn, loader, cfg: LRRangeTest, device: torch.device,
               lr_ratios: Sequence[float] | None = None) -> dict:
    """Sweep the LR, restore model and optimizer, and return the record for JSON.
    ``lr_ratios``: discriminative LRs, group i at ratios[i] x the swept LR (the
    recorded LR is that of a group with ratio 1)."""
    # torch-lr-finder divides the loss in place (gradient accumulation); a clone
    # keeps that off the output of sqrt, whose backward needs it unchanged.
    finder = LRFinder(model, optimizer, lambda out, target: loss_fn(out, target).clone(), device=device)
    hooks = _scale_groups(optimizer, lr_ratios) if lr_ratios is not None else []
    # torch-lr-finder prints progress and notes to stdout; keep stage logs tidy.
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            finder.range_test(_LoaderIter(loader), start_lr=cfg.start_lr, end_lr=cfg.end_lr,
                              num_iter=cfg.num_iter, step_mode=cfg.step_mode, smooth_f=cfg.smooth,
                              diverge_th=cfg.diverge_threshold)
    finally:
        for hook in hooks:
            hook.remove()
    finder.reset()  # model weights and optimizer state as they were before the sweep
    lrs = np.asarray(finder.history["lr"], dtype=float)
    losses = np.asarray(finder.history["loss"], dtype=float)
    finite = np.isfinite(losses)
    lrs, losses = lrs[finite], losses[finite]
    if len(lrs) < 5:
        raise PipelineError(f"LR range test: only {len(lrs)} finite losses recorded; "
                            "lower lr_find start_lr or raise diverge_threshold")
    return {
        "lrs": lrs.tolist(), "losses": losses.tolist(), **suggest(lrs, losses, cfg.rule),
        "diverged": bool(len(lrs) < cfg.num_iter), "step_mode": cfg.step_mode,
        **({"lr_ratios": [float(r) for r in lr_ratios]} if lr_ratios is not None else {}),
    }


def suggest(lrs: np.ndarray, losses: np.ndarray, rule: str) -> dict:
    """The record's suggestion keys: ``rules``, each rule's own pick; ``suggestions``, each
    rule's pick after the guard (what ``lr: auto`` would take with that rule); ``suggested_lr``,
    the chosen rule's; ``past_min``, the rules the guard overrode; ``disagreement``, the span
    of the rules' own picks (largest / smallest) and whether it exceeds DISAGREEMENT_FACTOR."""
    picks = {name: SUGGESTERS[name](lrs, losses) for name in RULES}
    suggestions = {name: below_min(pick, lrs, losses) for name, pick in picks.items()}
    ratio = max(picks.values()) / min(picks.values())
    return {
        "rules": picks, "suggestions": suggestions, "rule": rule, "suggested_lr": suggestions[rule],
        "lr_at_min": lr_at_min(lrs, losses),
        "past_min": [name for name in RULES if suggestions[name] != picks[name]],  # below_min replaced them
        "disagreement": {"ratio": ratio, "factor": DISAGREEMENT_FACTOR, "flagged": bool(ratio > DISAGREEMENT_FACTOR)},
    }


_LR = {"type": "number", "exclusiveMinimum": 0}
_LRS = {"type": "object", "additionalProperties": _LR}
# reports/lr_find/<model>.json, written by lr_find_<model> (the baselines' <model>_random.json too).
RECORD = JsonFile("lr_find_<model>", "reports/lr_find/*.json", record({
    "lrs": array(_LR, min_items=2), "losses": array(NUMBER, min_items=2), "rules": _LRS, "suggestions": _LRS,
    "rule": {"enum": list(RULES)}, "suggested_lr": _LR, "lr_at_min": _LR, "past_min": array(TEXT, min_items=0),
    "disagreement": record({"ratio": {"type": "number", "minimum": 1}, "flagged": {"type": "boolean"}}),
}))
CURVE = JsonFile("lr_find_<model>", "reports/lr_find/*_curve.json", array(record({"lr": _LR, "loss": NUMBER})))


def record_file(json_path: Path, layout: JsonFile = RECORD) -> JsonFile:
    """The layout of the record at ``json_path`` (or of its curve), naming the stage that writes it."""
    producer = "lr_find_" + Path(json_path).stem.removesuffix("_curve").removesuffix("_random")
    return dataclasses.replace(layout, producer=producer, pattern=Path(json_path).as_posix())


def read_record(json_path: Path) -> dict:
    return record_file(json_path).read(json_path)


def curve_plot(json_path: Path, title: str, x_label: str = "learning rate (log scale)") -> tuple[Path, dict]:
    """The stage declaration's plot of a range test: its curve on a log-x axis
    (template .dvc/plots/lr_find_logx.json), the suggestion dashed."""
    return curve_path(json_path), {"template": "lr_find_logx", "x": "lr", "y": "loss", "x_label": x_label,
                                   "y_label": "smoothed training loss",
                                   "title": f"{title}: LR range test, dashed: the chosen rule's suggestion"}


def curve_path(json_path: Path) -> Path:
    """reports/lr_find/<model>.json -> reports/lr_find/<model>_curve.json."""
    json_path = Path(json_path)
    return json_path.with_name(f"{json_path.stem}_curve.json")


def save_result(result: dict, json_path: Path) -> None:
    """The record (parallel lists, read by ``lr: auto``) and the same curve as a list of
    records {lr, loss, suggested_lr}, the shape ``dvc plots`` draws (log-x template
    .dvc/plots/lr_find_logx.json)."""
    record_file(json_path).write(json_path, result)
    curve = [
        {"lr": lr, "loss": loss, "suggested_lr": result["suggested_lr"]}
        for lr, loss in zip(result["lrs"], result["losses"])
    ]
    record_file(curve_path(json_path), CURVE).write(curve_path(json_path), curve)


def resolve_lr(lr: float | str, json_path: Path, key: str) -> float:
    """A number is used as is; ``auto`` takes the LR range test's suggestion."""
    if lr != "auto":
        return float(lr)
    if not Path(json_path).is_file():
        raise PipelineError(f"params.yaml: '{key}' is 'auto' but {json_path} does not exist: "
                            "run its lr_find stage first (dvc repro, or set a number)")
    record = read_record(json_path)
    value = float(record["suggested_lr"])
    log.info("%s: auto -> %.4g (rule %s, from %s)", key, value, record.get("rule"), json_path)
    return value
