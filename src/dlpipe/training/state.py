"""The state of a training run, shared by both loops (``loop.fit``, ``gan.fit_gan``).

A ``TrainingState`` is what a run has done so far (epochs, history rows, the
best metric and weights, early stopping's count) plus the objects it trains
(networks, optimizers, schedulers, ...: anything with ``state_dict`` and
``load_state_dict``), named as they appear in the checkpoint. It resumes
itself from the checkpoint of its ``RunFiles`` when that checkpoint has the
same run identity (``checkpoint.run_identity``), restoring the RNG states with
it, and after every epoch logs the epoch's history rows (DVCLive,
``dlpipe.training.live``) and writes itself as the next checkpoint
(``checkpoint.save``; the ``epoch_end`` fault point sits right after it, see
``dlpipe.training.faults``). The loops keep what differs: the steps of an
epoch, what a history row holds, when a result is the best.

Progress: a tqdm bar in a terminal, with the log lines written above it
(``logging_redirect_tqdm``), so a bar and a log line never share a line; no
bar where the output is a file or a pipe (DVC's and Snakemake's logs), which
then get one log line per epoch.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from dlpipe.errors import excerpt
from dlpipe.training import checkpoint, faults
from dlpipe.training.live import TrainingLog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunFiles:
    """What a training run is called and where it keeps its progress: ``checkpoint``,
    the resumable checkpoint (None: none), valid only for a run of the same
    ``identity`` (``checkpoint.run_identity``); ``live``, the DVCLive folder of its
    history (None: none), whose steps are the rows' ``step_key``; ``name`` names the
    run in the progress bar and the log."""

    name: str = "train"
    checkpoint: Path | None = None
    identity: str = ""
    live: Path | None = None
    step_key: str = "epoch"


class GeneratorState:
    """A ``torch.Generator`` as a checkpoint component (its state is a ByteTensor)."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def state_dict(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state_dict(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


@dataclass
class TrainingState:
    """A run's progress and the objects it trains; see the module docstring.

    ``components``: {checkpoint key: object with ``state_dict``/``load_state_dict``};
    a None value (no scheduler, no EMA) is left out. ``epoch``: epochs done;
    ``history``: the logged rows (one per epoch, or per step for the GAN); ``summary``:
    the series DVCLive's metrics.json shows (empty: all).
    """

    files: RunFiles
    components: dict[str, Any]
    summary: tuple[str, ...] = ()
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_metric: float | None = None
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    stopped: bool = False  # stopped early: a resumed run trains no further
    _bar: Any = field(default=None, init=False, repr=False)
    _log: TrainingLog | None = field(default=None, init=False, repr=False)

    _PROGRESS = ("epoch", "history", "best_metric", "best_epoch", "best_state", "bad_epochs", "stopped")

    def __post_init__(self):
        self.components = {name: obj for name, obj in self.components.items() if obj is not None}

    # ----------------------------------------------------------------- the checkpoint

    def state_dict(self) -> dict:
        """The checkpoint: the run identity, every component's state, the RNG states
        and the progress, as tensors and plain values (``weights_only`` loads it)."""
        return {"params_hash": self.files.identity, **self._objects_state(),
                **{key: getattr(self, key) for key in self._PROGRESS}}

    def load_state_dict(self, saved: dict) -> None:
        self._load_objects(saved)
        for key in self._PROGRESS:
            setattr(self, key, saved[key])

    def resume(self) -> bool:
        """Continue from the checkpoint if there is one of this run identity (False: a fresh
        start), then open the DVCLive folder with the history so far."""
        saved = None
        if self.files.checkpoint is not None:
            saved = checkpoint.load_resumable(self.files.checkpoint, self.files.identity)
        if saved:
            progress, objects = {key: getattr(self, key) for key in self._PROGRESS}, self.snapshot()
            try:
                self._check_saved(saved)
                self.load_state_dict(saved)
            except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
                # Not the checkpoint this code writes: back to the fresh start, the file set aside.
                why = f"{type(exc).__name__}: {excerpt(' '.join(str(exc).split()))}"
                checkpoint.set_aside(Path(self.files.checkpoint), why)
                self.restore(objects)
                for key, value in progress.items():
                    setattr(self, key, value)
                saved = None
        if self.files.live is not None:
            self._log = TrainingLog(self.files.live, self.files.step_key, self.history, self.summary)
        return bool(saved)

    def _check_saved(self, saved: dict) -> None:
        """The progress values' types (``epoch`` checked by ``checkpoint.load_resumable``, the
        components' states by their own ``load_state_dict``)."""
        kinds = {"history": list, "best_epoch": int, "bad_epochs": int, "stopped": bool, "rng": dict}
        for key, kind in kinds.items():
            if not isinstance(saved.get(key), kind) or (kind is int and saved[key] < 0):
                raise ValueError(f"'{key}' is {excerpt(repr(saved.get(key)))}, expected a {kind.__name__}")
        if not all(isinstance(row, dict) for row in saved["history"]) or len(saved["history"]) < saved["epoch"]:
            raise ValueError(f"'history' does not hold a row per epoch of the {saved['epoch']} done")
        if saved.get("best_metric") is not None and not isinstance(saved["best_metric"], (int, float)):
            raise ValueError("'best_metric' is not a number")
        best = saved.get("best_state")
        if best is not None and not (isinstance(best, dict) and all(isinstance(v, torch.Tensor) for v in best.values())):
            raise ValueError("'best_state' is not a state_dict")

    def snapshot(self) -> dict:
        """A copy in memory of what training changes within an epoch (the components and
        the RNG states; not the progress, which only ``end_epoch`` changes), for ``restore``."""
        return copy.deepcopy(self._objects_state())

    def restore(self, snapshot: dict) -> None:
        self._load_objects(copy.deepcopy(snapshot))

    def _objects_state(self) -> dict:
        return {**{name: obj.state_dict() for name, obj in self.components.items()}, "rng": checkpoint.rng_states()}

    def _load_objects(self, saved: dict) -> None:
        for name, obj in self.components.items():
            value = saved.get(name)
            if value is None or (isinstance(value, dict) and not value):
                continue  # an empty dict: the state of a disabled GradScaler
            obj.load_state_dict(value)
        checkpoint.restore_rng_states(saved["rng"])

    # ----------------------------------------------------------------- the epochs

    def epochs(self, total: int) -> Iterator[int]:
        """The epochs still to run (0-based) under a progress bar (``postfix``); none
        after an early stop, a resumed one included. ``disable=None``: no bar unless
        stderr is a terminal."""
        self._bar = tqdm(range(self.epoch, total), desc=self.files.name, unit="epoch", initial=self.epoch,
                         total=total, disable=True if self.stopped else None, mininterval=1.0)
        with logging_redirect_tqdm() if not self._bar.disable else contextlib.nullcontext():
            for epoch in self._bar:
                if self.stopped:
                    break
                yield epoch

    def postfix(self, **values: str) -> None:
        self._bar.set_postfix(**values)

    def end_epoch(self, rows: list[dict]) -> None:
        """One more epoch done with these history rows: logged, then the checkpoint."""
        self.history.extend(rows)
        self.epoch += 1
        if self._log is not None:
            self._log.log(rows)
        if self.files.checkpoint:
            checkpoint.save(self.files.checkpoint, self.state_dict())
            faults.kill_if_armed("epoch_end", self.epoch)

    def finish(self) -> None:
        """The run is over: DVCLive's closing summary."""
        if self._log is not None:
            self._log.end()
