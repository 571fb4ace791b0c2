"""The state of a training run, shared by both loops (``loop.fit``, ``gan.fit_gan``).

A ``TrainingState`` is what a run has done so far (epochs, history rows, the
best metric and weights, early stopping's count) plus the objects it trains
(networks, optimizers, schedulers, ...: anything with ``state_dict`` and
``load_state_dict``), named as they appear in the checkpoint. It resumes
itself from the checkpoint of its ``RunFiles`` when that checkpoint has the
same run identity (``checkpoint.run_identity``), restoring the RNG states with
it, and after every epoch writes the history CSV and itself as the next
checkpoint (``checkpoint.save``; the ``epoch_end`` fault point sits right
after it, see ``dlpipe.training.faults``). The loops keep what differs: the
steps of an epoch, what a history row holds, when a result is the best.
"""

from __future__ import annotations

import copy
import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm import tqdm

from dlpipe.io import write_text
from dlpipe.training import checkpoint, faults

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunFiles:
    """What a training run is called and where it keeps its progress: ``checkpoint``,
    the resumable checkpoint (None: none), valid only for a run of the same
    ``identity`` (``checkpoint.run_identity``); ``history``, the history CSV
    (None: none); ``name`` names the run in the progress bar and the log."""

    name: str = "train"
    checkpoint: Path | None = None
    identity: str = ""
    history: Path | None = None


def write_history(path: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text(path, buffer.getvalue())


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
    ``history``: the history CSV's rows (one per epoch, or per step for the GAN).
    """

    files: RunFiles
    components: dict[str, Any]
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_metric: float | None = None
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    stopped: bool = False  # stopped early: a resumed run trains no further
    _bar: Any = field(default=None, init=False, repr=False)

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
        """Continue from the checkpoint if there is one of this run identity; False: a fresh start."""
        if self.files.checkpoint is None:
            return False
        saved = checkpoint.load_resumable(self.files.checkpoint, self.files.identity)
        if not saved:
            return False
        self.load_state_dict(saved)
        return True

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
        after an early stop, a resumed one included."""
        self._bar = tqdm(range(self.epoch, total), desc=self.files.name, unit="epoch", initial=self.epoch,
                         total=total, disable=self.stopped, mininterval=1.0)
        for epoch in self._bar:
            if self.stopped:
                break
            yield epoch

    def postfix(self, **values: str) -> None:
        self._bar.set_postfix(**values)

    def end_epoch(self, rows: list[dict]) -> None:
        """One more epoch done with these history rows: the history CSV, then the checkpoint."""
        self.history.extend(rows)
        self.epoch += 1
        if self.files.history:
            write_history(self.files.history, self.history)
        if self.files.checkpoint:
            checkpoint.save(self.files.checkpoint, self.state_dict())
            faults.kill_if_armed("epoch_end", self.epoch)

    def finish(self) -> None:
        """The history CSV once more: a resumed run with nothing left to train writes it
        from the checkpoint (the engines delete a stage's outputs before running it)."""
        if self.files.history and self.history:
            write_history(self.files.history, self.history)
