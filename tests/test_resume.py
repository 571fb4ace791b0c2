"""Every training stage survives SIGKILL and is deterministic on the CPU.

Each stage runs as ``python -m dlpipe <stage>`` (the command both engines run)
in copies of a finished tiny pipeline run, with three epochs of a few batches:

* twice from scratch: the weights and every other output are the same bytes
  (determinism), and so are the metrics of the stage that evaluates them;
* killed with SIGKILL (``DLPIPE_FAULT``, see dlpipe.training.faults) in the
  middle of epoch 2, then halfway through writing epoch 2's checkpoint, then
  right after it, and rerun each time: the last rerun finishes with the same
  bytes as the uninterrupted run;
* train_houses stopped by Ctrl-C (SIGINT) in the middle of epoch 2, then while
  writing epoch 2's checkpoint: one line each, and the rerun ends the same way.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import engine_env, output_roots, same_tree, write_params
from dlpipe.workflow_graph import load_stages

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3
# Per training stage: params that give it EPOCHS epochs of a few batches, its
# checkpoint, and the stage that turns its weights into metrics.
STAGES = {
    "train_houses": ({"houses.train.epochs": EPOCHS}, "checkpoints/houses", "evaluate_houses"),
    "train_lenet": ({"lenet.train.epochs": EPOCHS, "lenet.train.max_batches": 4}, "checkpoints/lenet",
                    "evaluate_lenet"),
    "train_fid_lenet": ({"dcgan.feature_net.train.epochs": EPOCHS, "dcgan.feature_net.train.max_batches": 4},
                        "checkpoints/fid_lenet", None),
    "pretrain_transfer_backbone": ({"transfer.pretrain.train.epochs": EPOCHS,
                                    "transfer.pretrain.train.max_batches": 3},
                                   "checkpoints/transfer_backbone", None),
    # The tiny few-shot split has 20 training pictures: batches of 8 give the 3 steps an epoch the kill needs.
    "train_transfer_head": ({"transfer.head.train.epochs": EPOCHS, "transfer.head.train.max_batches": 3,
                             "transfer.head.train.batch_size": 8},
                            "checkpoints/transfer_head", None),
    "train_transfer_finetune": ({"transfer.finetune.train.epochs": EPOCHS,
                                 "transfer.finetune.train.max_batches": 3, "transfer.finetune.train.batch_size": 8},
                                "checkpoints/transfer_finetune", "evaluate_transfer"),
    "train_dcgan": ({"dcgan.train.epochs": EPOCHS, "dcgan.train.max_batches": 3}, "checkpoints/dcgan",
                    "evaluate_dcgan"),
}
COPIED = ("src", "workflow", *output_roots(), "params.yaml")


def stage_outputs(name: str) -> list[str]:
    return list(next(stage.outs for stage in load_stages(REPO / "dvc.yaml") if stage.name == name))


def files_under(root: Path, rels) -> dict[str, bytes]:
    found = {}
    for rel in rels:
        path = root / rel
        for file in ([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())):
            found[file.relative_to(root).as_posix()] = file.read_bytes()
    return found


def dlpipe(stage: str, root: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    env = engine_env(PYTHONPATH=str(root / "src"))
    env.pop("DLPIPE_FAULT", None)
    if fault:
        env["DLPIPE_FAULT"] = fault
    # SIGINT as a terminal's Ctrl-C finds it, however pytest was started (a background job
    # of a script inherits it ignored, and Python then leaves it ignored).
    return subprocess.run([sys.executable, "-m", "dlpipe", stage], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def killed(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == -signal.SIGKILL, f"expected a SIGKILL, got {proc.returncode}:\n{proc.stderr[-3000:]}"


def interrupted(proc: subprocess.CompletedProcess, epoch: int, checkpoint: str) -> None:
    """Stopped by Ctrl-C: status 130 and one line naming the checkpoint a rerun resumes from."""
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == \
           f"interrupted: the last checkpoint (epoch {epoch}, {checkpoint}) is kept; rerun to resume"


@pytest.fixture(scope="module")
def base(tiny_dvc_run, tmp_path_factory) -> Path:
    """The tiny run's inputs and outputs with three-epoch training params."""
    root = tmp_path_factory.mktemp("resume_base")
    for rel in COPIED:
        src = tiny_dvc_run.repo / rel
        (linked_tree if src.is_dir() else shutil.copy2)(src, root / rel)
    overrides = {key: value for stage_overrides, _, _ in STAGES.values() for key, value in stage_overrides.items()}
    write_params(root / "params.yaml", overrides)
    return root


def linked_tree(src: Path, dest: Path) -> None:
    """A copy whose files are hard links: the stages write every file to a temporary
    name and rename it (dlpipe.io), so a run replaces a link and never writes into
    the shared file, and 18 workspaces cost no disk (real copies took ~10 GB)."""
    shutil.copytree(src, dest, copy_function=os.link)


def fresh_workspace(base: Path, dest: Path, stage: str) -> Path:
    """A copy of ``base`` with the stage's outputs and checkpoint removed, as DVC
    and Snakemake leave them before running the stage (the checkpoint is
    persistent; it is removed here so that the run starts from scratch).
    params.yaml is a real copy: write_params rewrites it in place."""
    linked_tree(base, dest)
    (dest / "params.yaml").unlink()
    shutil.copy2(base / "params.yaml", dest / "params.yaml")
    clear_outputs(dest, stage)
    shutil.rmtree(dest / STAGES[stage][1], ignore_errors=True)
    return dest


def clear_outputs(root: Path, stage: str) -> None:
    """What an engine does before rerunning a stage: remove its (non-persistent) outputs."""
    for rel in stage_outputs(stage):
        path = root / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def load_checkpoint(root: Path, stage: str) -> dict:
    return torch.load(root / STAGES[stage][1] / "last.pt", map_location="cpu", weights_only=True)


def checkpoint_epoch(root: Path, stage: str) -> int:
    return load_checkpoint(root, stage)["epoch"]


# The kill tests of the slower stages (30 to 80 s each on 2 cores) run under make test-slow;
# the default suite keeps houses and LeNet (the supervised loop, every fault point).
# The default suite kills train_houses (the checkpoint code every training stage shares); the
# others under make test-slow.
SLOW_STAGES = {"train_lenet", "pretrain_transfer_backbone", "train_transfer_head", "train_transfer_finetune",
               "train_dcgan", "train_fid_lenet"}


@pytest.mark.parametrize("stage", [pytest.param(s, marks=[pytest.mark.slow] if s in SLOW_STAGES else [])
                                   for s in STAGES])
def test_same_params_give_the_same_bytes_and_a_killed_run_resumes_to_them(stage, base, tmp_path):
    checkpoint_dir, evaluator = STAGES[stage][1], STAGES[stage][2]
    # The checkpoint is compared by content: pickle shares equal strings by
    # identity, so a checkpoint whose history was loaded and extended is
    # pickled to other bytes; it is not a cached output, the weights are.
    outputs = stage_outputs(stage)

    whole = fresh_workspace(base, tmp_path / "whole", stage)
    again = fresh_workspace(base, tmp_path / "again", stage)
    for root in (whole, again):
        ok(dlpipe(stage, root))
        if evaluator:
            ok(dlpipe(evaluator, root))
    reference = files_under(whole, outputs)
    assert any(rel.startswith("models/") and rel.endswith(".pt") for rel in reference)
    assert files_under(again, outputs) == reference, f"{stage}: two runs from scratch differ"
    assert same_tree(load_checkpoint(again, stage), load_checkpoint(whole, stage))
    if evaluator:
        metrics = stage_outputs(evaluator)
        assert files_under(again, metrics) == files_under(whole, metrics), f"{evaluator}: metrics differ"

    root = fresh_workspace(base, tmp_path / "killed", stage)
    killed(dlpipe(stage, root, fault="step:2:2"))  # mid-epoch 2: epoch 1's checkpoint is the last
    assert checkpoint_epoch(root, stage) == 1
    assert not any((root / rel).exists() for rel in stage_outputs(stage) if rel.startswith("models/"))

    clear_outputs(root, stage)
    killed(dlpipe(stage, root, fault="checkpoint:2"))  # while writing epoch 2's checkpoint
    assert checkpoint_epoch(root, stage) == 1, "a half-written checkpoint replaced the good one"
    leftovers = list((root / checkpoint_dir).glob(".last.pt.*.tmp"))
    assert len(leftovers) == 1 and 0 < leftovers[0].stat().st_size < (root / checkpoint_dir / "last.pt").stat().st_size

    clear_outputs(root, stage)
    killed(dlpipe(stage, root, fault="epoch_end:2"))  # right after epoch 2's checkpoint is on disk
    assert checkpoint_epoch(root, stage) == 2
    assert not list((root / checkpoint_dir).glob(".last.pt.*.tmp")), "the killed write's temporary file was kept"

    clear_outputs(root, stage)
    log = ok(dlpipe(stage, root))
    assert f"resuming from {checkpoint_dir}/last.pt (epoch 2 done)" in log
    assert files_under(root, outputs) == reference, f"{stage}: the resumed run differs from the uninterrupted one"
    assert same_tree(load_checkpoint(root, stage), load_checkpoint(whole, stage))


def test_ctrl_c_stops_with_one_line_and_the_rerun_resumes_to_the_same_bytes(base, tmp_path):
    """SIGINT from the process itself (``DLPIPE_FAULT=sigint:...``): Python handles it as it
    handles a terminal's Ctrl-C, at the next bytecode after the point the fault names."""
    stage = "train_houses"
    checkpoint, outputs = f"{STAGES[stage][1]}/last.pt", stage_outputs(stage)
    whole = fresh_workspace(base, tmp_path / "whole", stage)
    ok(dlpipe(stage, whole))

    root = fresh_workspace(base, tmp_path / "w", stage)
    interrupted(dlpipe(stage, root, fault="sigint:step:2:1"), 1, checkpoint)  # mid-epoch 2
    assert checkpoint_epoch(root, stage) == 1
    assert not any((root / rel).exists() for rel in outputs if rel.startswith("models/"))
    # Ctrl-C while epoch 2's checkpoint is written: the write finishes first, whole.
    interrupted(dlpipe(stage, root, fault="sigint:checkpoint:2"), 2, checkpoint)
    assert checkpoint_epoch(root, stage) == 2
    assert not list((root / STAGES[stage][1]).glob(".last.pt.*.tmp"))

    clear_outputs(root, stage)
    assert f"resuming from {checkpoint} (epoch 2 done)" in ok(dlpipe(stage, root))
    assert files_under(root, outputs) == files_under(whole, outputs)
    assert same_tree(load_checkpoint(root, stage), load_checkpoint(whole, stage))


def test_other_params_start_afresh_and_say_so(base, tmp_path):
    root = fresh_workspace(base, tmp_path / "w", "train_houses")
    killed(dlpipe("train_houses", root, fault="epoch_end:1"))
    write_params(root / "params.yaml", {"houses.train.optimizer.weight_decay": 0.05})
    clear_outputs(root, "train_houses")
    log = ok(dlpipe("train_houses", root))
    assert "checkpoints/houses/last.pt was made with other params; starting afresh" in log
    assert "resuming" not in log
    assert checkpoint_epoch(root, "train_houses") == EPOCHS


def test_another_thread_count_starts_afresh_and_says_so(base, tmp_path):
    """threads.<stage> is part of the checkpoint's identity: another count gives other bits."""
    root = fresh_workspace(base, tmp_path / "w", "train_houses")
    killed(dlpipe("train_houses", root, fault="epoch_end:1"))
    declared = yaml.safe_load((root / "params.yaml").read_text())["threads"]["train_houses"]
    write_params(root / "params.yaml", {"threads.train_houses": 1 if declared > 1 else 2})
    clear_outputs(root, "train_houses")
    log = ok(dlpipe("train_houses", root))
    assert "checkpoints/houses/last.pt was made with other params; starting afresh" in log
