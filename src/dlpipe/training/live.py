"""The training logger: DVCLive, one folder per training stage, ``dvclive/<stage>/``.

Each folder has DVCLive's own layout: ``metrics.json`` (the ``step`` and the
latest value of the series the loop names as its summary, e.g. the monitored
validation metric; a ``metrics`` entry of the stage, so ``dvc exp show``
lists it while ``dvc exp run`` runs, and one that keeps ``dvc metrics show``
as narrow as a terminal) and ``plots/metrics/<name>.tsv``
(one series each, columns ``step`` and the value; an ``outs`` entry, drawn by
``dvc plots`` and read by the HTML report through ``read_history``). Both are
small text, tracked by git (``cache: false``), so ``dvc metrics diff`` and
``dvc plots diff`` work across commits with no DVC remote.

The training loops' history rows are the source (``TrainingState``): a row is
one step, named by its ``step_key`` (``epoch`` for the supervised loop,
``step`` for the GAN's per-step rows), its other keys are the series. Nothing
time-dependent is written (DVCLive's optional timestamps stay off), so the
files are as deterministic as the numbers in them. A resumed run opens the
folder with ``resume=True`` and continues its step series; rows the folder
lacks (the engines delete a stage's outputs before rerunning it, or a run was
killed between logging and its checkpoint) are logged again from the
checkpoint's history, so the folder always ends as an uninterrupted run's.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from dlpipe.errors import PipelineError

log = logging.getLogger(__name__)

ROOT = Path("dvclive")
METRICS_FILE = "metrics.json"
PLOTS = "plots"
SERIES = Path(PLOTS, "metrics")


def stage_dir(stage_module: str) -> Path:
    """``dvclive/<stage>`` for a stage module's ``__name__``."""
    return ROOT / stage_module.rpartition(".")[2]


def metrics_file(directory: Path) -> Path:
    return directory / METRICS_FILE


def plots_dir(directory: Path) -> Path:
    return directory / PLOTS


def series_file(directory: Path, name: str) -> Path:
    return directory / SERIES / f"{name}.tsv"


def _text(value) -> str:
    """A value as DVCLive writes it into a TSV cell (NaN and infinity as their names)."""
    return str(value)


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        return float(text)


def read_series(directory: Path) -> dict[str, dict[int, str]]:
    """{series name: {step: the cell's text}} of every TSV under ``plots/metrics``."""
    found = {}
    for path in sorted((directory / SERIES).glob("*.tsv")):
        try:
            with path.open(newline="", encoding="utf-8") as fh:
                rows = {int(row["step"]): row[path.stem] for row in csv.DictReader(fh, delimiter="\t")}
            for text in rows.values():
                _number(text)
        except (KeyError, TypeError, ValueError, UnicodeDecodeError, csv.Error) as exc:
            # the folder is named after the training stage (a baseline's with _random)
            raise PipelineError(f"{path}: not a series DVCLive writes (step, {path.stem}: numbers; "
                                f"{type(exc).__name__}); rerun {directory.name.removesuffix('_random')}") from None
        found[path.stem] = rows
    return found


def read_history(directory: Path, step_key: str = "epoch") -> list[dict]:
    """The rows the folder holds, by step, as the loop logged them: ``{step_key: step, series: value}``."""
    series = read_series(directory)
    steps = sorted({step for values in series.values() for step in values})
    return [{step_key: step, **{name: _number(values[step]) for name, values in series.items() if step in values}}
            for step in steps]


class TrainingLog:
    """A stage's DVCLive folder, kept equal to the history rows of its training run."""

    def __init__(self, directory: Path, step_key: str, history: list[dict], summary: tuple[str, ...] = ()):
        """``summary``: the series metrics.json holds besides the step (empty: all)."""
        # DVCLive's INFO lines ("Logging to experiment ...", a random name under plain
        # `dvc repro`) say nothing about this run; its warnings still show.
        logging.getLogger("dvclive").setLevel(logging.WARNING)
        self.step_key = step_key
        self.summary = summary
        self.directory = directory
        self.live = None
        logged = self._logged_prefix(directory, history)
        if logged:
            self.live = self._open(resume=True)
        # A fresh folder is started (and the old one cleared) only when the first row is
        # logged: a run that fails in its first epoch leaves the folder of the checkpoint
        # it did not replace.
        self.log(history[logged:])

    def _open(self, resume: bool):
        from dvclive import Live

        # save_dvc_exp: no `dvc exp save` from inside a stage; dvcyaml: dvc.yaml is generated
        # from the stage declarations; report: the pipeline renders its own.
        return Live(str(self.directory), resume=resume, save_dvc_exp=False, dvcyaml=False, report=None)

    def _logged_prefix(self, directory: Path, history: list[dict]) -> int:
        """How many of ``history``'s rows the folder already holds, cell for cell (0: start it afresh)."""
        if not directory.is_dir():
            return 0
        try:
            series = read_series(directory)
        except PipelineError as exc:  # damaged: rewritten from the checkpoint's history
            log.warning("%s; starting the folder afresh", exc)
            return 0
        count = len({step for values in series.values() for step in values})
        if not series or count > len(history):
            return 0
        names = {name for row in history[:count] for name in row if name != self.step_key}
        if set(series) != names:  # a series this run does not log: another run's folder
            return 0
        for row in history[:count]:
            step = row[self.step_key]
            for name, value in row.items():
                if name != self.step_key and series.get(name, {}).get(step) != _text(value):
                    return 0
        return count

    def log(self, rows: list[dict]) -> None:
        """Append ``rows`` (one per step) to the series, then the summary once."""
        if not rows:
            return
        from dvclive.vscode import mark_dvclive_step_completed

        if self.live is None:
            self.live = self._open(resume=False)

        for row in rows:
            self.live.step = row[self.step_key]
            for name, value in row.items():
                if name != self.step_key:
                    self.live.log_metric(name, value)
        # The summary (metrics.json) once per call, not per row: DVCLive's next_step would
        # also reread every series, per step for the GAN.
        if self.summary:
            self.live.summary = {key: value for key, value in self.live.summary.items() if key in self.summary}
        self.live.make_summary()
        mark_dvclive_step_completed(self.live.step)  # the VS Code extension's live plots

    def end(self) -> None:
        if self.live is None:  # nothing was logged: an empty folder, as DVCLive leaves one
            self.live = self._open(resume=False)
        self.live.end()


def plot_group(series: dict[Path, list[str]], x: str = "step") -> dict:
    """A dvc.yaml top-level plot of series from one or more stage folders:
    ``{folder: [series names]}`` -> ``{"x": x, "y": {tsv file: name, ...}}``."""
    return {"x": x, "y": {series_file(directory, name).as_posix(): name
                          for directory, names in series.items() for name in names}}

