"""The DVCLive folder of a training run (dlpipe.training.live): what it holds, and that it
always ends as an uninterrupted run's, whatever a resumed run finds in it."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from dlpipe.training import live

ROWS = [{"epoch": e, "lr": 0.1 / e, "train_loss": 1 / (e + 0.5), "val_accuracy": e / 7} for e in range(1, 6)]


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run(folder: Path, history: list[dict], rows: list[dict]) -> dict[str, bytes]:
    """Open the folder with the history so far, log ``rows`` one epoch at a time, close it."""
    log = live.TrainingLog(folder, "epoch", history)
    for row in rows:
        log.log([row])
    log.end()
    return files(folder)


@pytest.fixture
def uninterrupted(tmp_path) -> dict[str, bytes]:
    return run(tmp_path / "whole", [], ROWS)


def test_the_folder_has_dvclive_layout_and_reads_back_as_the_rows(tmp_path, uninterrupted):
    folder = tmp_path / "whole"
    assert set(uninterrupted) == {"metrics.json", "plots/metrics/lr.tsv", "plots/metrics/train_loss.tsv",
                                  "plots/metrics/val_accuracy.tsv"}
    assert uninterrupted["plots/metrics/lr.tsv"].decode().splitlines()[:2] == ["step\tlr", "1\t0.1"]
    summary = json.loads(uninterrupted["metrics.json"])
    assert summary == {**{k: v for k, v in ROWS[-1].items() if k != "epoch"}, "step": 5}
    assert live.read_history(folder, "epoch") == ROWS  # exactly: the text is each float's repr


@pytest.mark.parametrize("logged", [0, 2, 4, 5])
def test_a_resumed_run_continues_the_step_series(tmp_path, uninterrupted, logged):
    """Killed after ``logged`` epochs (checkpoint and folder agree): the resumed run opens the
    folder with resume=True and appends; the files equal an uninterrupted run's."""
    folder = tmp_path / "resumed"
    run(folder, [], ROWS[:logged])
    assert run(folder, ROWS[:logged], ROWS[logged:]) == uninterrupted


@pytest.mark.parametrize("case", ["deleted", "behind", "ahead", "other_values", "foreign_file"])
def test_a_folder_that_disagrees_with_the_checkpoint_is_rebuilt_from_it(tmp_path, uninterrupted, case):
    """The checkpoint's history is the truth: the engines delete outputs before a rerun
    (deleted), a kill between logging and the checkpoint leaves the folder one epoch ahead,
    a kill between the checkpoint and logging one behind; a folder from other params holds
    other values."""
    folder = tmp_path / "resumed"
    done = 3
    if case == "deleted":
        pass
    elif case == "behind":
        run(folder, [], ROWS[:done - 1])
    elif case == "ahead":
        run(folder, [], ROWS[:done + 1])
    elif case == "other_values":
        run(folder, [], [{**row, "lr": 1.0} for row in ROWS[:done]])
    else:
        run(folder, [], ROWS[:done])
        (folder / "plots/metrics/stray.tsv").write_text("step\tstray\n1\t3\n")
    assert run(folder, ROWS[:done], ROWS[done:]) == uninterrupted


def test_non_finite_values_are_logged_by_name_and_read_back(tmp_path):
    rows = [{"step": 1, "loss": math.nan}, {"step": 2, "loss": math.inf}]
    run_folder = tmp_path / "gan"
    log = live.TrainingLog(run_folder, "step", [])
    log.log(rows)
    log.end()
    assert (run_folder / "plots/metrics/loss.tsv").read_text() == "step\tloss\n1\tnan\n2\tinf\n"
    back = live.read_history(run_folder, "step")
    assert math.isnan(back[0]["loss"]) and back[1]["loss"] == math.inf
    # reopened with the same rows: recognised as logged (nothing rewritten, nothing lost)
    before = files(run_folder)
    live.TrainingLog(run_folder, "step", rows).end()
    assert files(run_folder) == before
    shutil.rmtree(run_folder)


def test_plot_groups_name_each_series_file():
    group = live.plot_group({Path("dvclive/a"): ["train_loss"], Path("dvclive/b"): ["train_loss", "lr"]})
    assert group == {"x": "step", "y": {"dvclive/a/plots/metrics/train_loss.tsv": "train_loss",
                                        "dvclive/b/plots/metrics/train_loss.tsv": "train_loss",
                                        "dvclive/b/plots/metrics/lr.tsv": "lr"}}


def test_the_summary_holds_the_step_and_the_named_series_and_every_series_is_kept(tmp_path):
    folder = tmp_path / "named"
    log = live.TrainingLog(folder, "epoch", [], summary=("val_accuracy",))
    for row in ROWS:
        log.log([row])
    log.end()
    assert json.loads((folder / "metrics.json").read_text()) == {"val_accuracy": ROWS[-1]["val_accuracy"], "step": 5}
    assert live.read_history(folder, "epoch") == ROWS


def test_a_new_run_that_fails_before_its_first_row_leaves_the_folder_alone(tmp_path, uninterrupted):
    """Another run (other params: its checkpoint will not resume) that stops in its first
    epoch: the folder still holds the run of the checkpoint it did not replace."""
    folder = tmp_path / "whole"
    live.TrainingLog(folder, "epoch", [])  # opened fresh, then the run fails: nothing logged
    assert files(folder) == uninterrupted
