"""TrainingState: the progress and checkpoint both training loops share (loop.fit and
gan.fit_gan; their kill-and-resume runs: tests/test_resume.py)."""

from __future__ import annotations

import torch

from dlpipe.training import checkpoint
from dlpipe.training.state import GeneratorState, RunFiles, TrainingState


def parts(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return model, optimizer, torch.Generator().manual_seed(seed)


def state_of(files: RunFiles, seed: int = 0) -> TrainingState:
    model, optimizer, noise = parts(seed)
    return TrainingState(files, {"model": model, "optimizer": optimizer, "scheduler": None,
                                 "scaler": torch.amp.GradScaler("cpu", enabled=False),
                                 "noise_rng": GeneratorState(noise)})


def test_a_checkpoint_resumes_components_progress_and_rng_states(tmp_path):
    files = RunFiles("t", tmp_path / "ckpt" / "last.pt", "id-1", tmp_path / "live")
    state = state_of(files)
    assert "scheduler" not in state.components  # None: left out
    assert not state.resume() and list(state.epochs(2)) == [0, 1]
    state.best_metric, state.best_epoch, state.bad_epochs = 0.5, 1, 0
    state.best_state = {k: v.clone() for k, v in state.components["model"].state_dict().items()}
    state.components["noise_rng"].generator.manual_seed(7)
    state.end_epoch([{"epoch": 1, "loss": 0.25}])
    after_save = torch.rand(3), torch.randn(2, generator=state.components["noise_rng"].generator)
    assert (tmp_path / "live/plots/metrics/loss.tsv").read_text() == "step\tloss\n1\t0.25\n"  # DVCLive's layout
    saved = torch.load(files.checkpoint, weights_only=True)
    assert saved["params_hash"] == "id-1" and saved["epoch"] == 1 and saved["history"] == [{"epoch": 1, "loss": 0.25}]
    assert saved["scaler"] == {}  # a disabled GradScaler: saved empty, not loaded

    other = state_of(files, seed=1)  # other weights and RNG states, to be replaced
    assert other.resume()
    assert (other.epoch, other.best_metric, other.best_epoch, other.history) == (1, 0.5, 1, state.history)
    for key, value in state.components["model"].state_dict().items():
        assert torch.equal(other.components["model"].state_dict()[key], value)
    assert other.components["optimizer"].state_dict()["state"][0]["step"] == 1
    assert torch.equal(torch.rand(3), after_save[0])  # the RNG states of the save, restored
    assert torch.equal(torch.randn(2, generator=other.components["noise_rng"].generator), after_save[1])
    assert list(other.epochs(3)) == [1, 2]


def test_another_identity_starts_afresh(tmp_path, caplog):
    files = RunFiles("t", tmp_path / "last.pt", "id-1")
    state_of(files).end_epoch([{"epoch": 1}])
    fresh = state_of(RunFiles("t", files.checkpoint, "id-2"))
    with caplog.at_level("INFO"):
        assert not fresh.resume()
    assert "made with other params; starting afresh" in caplog.text
    assert (fresh.epoch, fresh.history) == (0, [])


def test_a_stopped_run_trains_no_further(tmp_path):
    files = RunFiles("t", tmp_path / "last.pt", "id")
    state = state_of(files)
    state.stopped = True
    state.end_epoch([{"epoch": 1}])
    resumed = state_of(files)
    assert resumed.resume() and resumed.stopped and list(resumed.epochs(5)) == []


def test_no_checkpoint_path_writes_none(tmp_path, monkeypatch):
    saves = []
    monkeypatch.setattr(checkpoint, "save", lambda *args: saves.append(args))
    state = state_of(RunFiles("t"))
    assert not state.resume()
    state.end_epoch([{"epoch": 1}])
    state.finish()
    assert saves == [] and state.epoch == 1 and not list(tmp_path.iterdir())


def test_restore_undoes_what_training_changed_since_the_snapshot():
    state = state_of(RunFiles("t"))
    model, optimizer = state.components["model"], state.components["optimizer"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    snapshot = state.snapshot()
    expected_draw = torch.rand(2)
    torch.manual_seed(123)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state.restore(snapshot)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert optimizer.state_dict()["state"][0]["step"] == 1
    assert torch.equal(torch.rand(2), expected_draw)
    optimizer.step()  # the restored state is the optimizer's own, not the snapshot's
    assert snapshot["optimizer"]["state"][0]["step"] == 1
