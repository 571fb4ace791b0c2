"""What is deterministic where (docs/architecture.md, Determinism), tested as stated.

- A stage's torch thread count is declared once, params.yaml ``threads.<stage>``;
  ``python -m dlpipe`` pins torch to it whatever the engine grants, the Snakefile
  reserves it, and it is part of the stage's run identity (its DVC params and its
  checkpoint). Same machine + same threads + same params -> the same bytes under
  either engine (tests/test_e2e_houses.py runs Snakemake with every grant changed;
  tests/test_resume.py runs every training stage twice and resumed).
- The DCGAN's metrics are measured with their own network (train_fid_lenet): a
  LeNet experiment leaves them byte-identical.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import clone_run, engine_env, write_params
from dlpipe import runtime
from dlpipe.config import load_params
from dlpipe.errors import PipelineError
from dlpipe.training.checkpoint import run_identity
from dlpipe.workflow_graph import check_thread_keys, load_stages, stage_threads

REPO = Path(__file__).resolve().parents[1]
RAN = re.compile(r"^Running stage '([^']+)'", re.M)


def declared() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_every_stage_declares_its_threads_and_lists_them_among_its_params():
    config = declared()
    stages = load_stages(REPO / "dvc.yaml")
    check_thread_keys(config, [stage.name for stage in stages])
    for stage in stages:
        assert stage_threads(config, stage.name) >= 1
        # A changed count reruns the stage under DVC (Snakemake: the rule's params, from the same list).
        assert f"threads.{stage.name}" in stage.params or "params.yaml" in stage.deps, stage.name


def test_a_missing_unknown_or_bad_entry_names_the_key():
    config = declared()
    with pytest.raises(PipelineError, match=r"other\.yaml: 'threads\.train_houses' not found; expected the torch "
                                            r"thread count of stage train_houses"):
        stage_threads({"threads": {}}, "train_houses", "other.yaml")
    with pytest.raises(PipelineError, match=r"'threads\.train_houses': 'two'; expected an integer from 1 to 1024"):
        stage_threads({"threads": {"train_houses": "two"}}, "train_houses")
    with pytest.raises(PipelineError, match=r"unknown key 'threads\.trian_houses'; expected a stage name"):
        check_thread_keys({"threads": {**config["threads"], "trian_houses": 2}}, list(config["threads"]))


def test_the_command_refuses_a_params_file_without_the_stages_entry(tmp_path):
    raw = declared()
    del raw["threads"]["fetch_classifier"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    os.symlink(REPO / "workflow", tmp_path / "workflow")  # the schema the loader finds beside the file
    proc = subprocess.run([sys.executable, "-m", "dlpipe", "fetch_classifier"], cwd=tmp_path,
                          env=engine_env(PYTHONPATH=str(REPO / "src")), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: params.yaml: 'threads.fetch_classifier' not found; expected the torch thread count of stage "
        "fetch_classifier (an integer from 1 to 1024)"]
    assert not (tmp_path / "data").exists()


def test_the_declared_count_wins_over_the_engines_grant(monkeypatch, caplog):
    before = torch.get_num_threads()
    try:
        for grant, count in (("1", 2), ("2", 1)):
            monkeypatch.setenv("OMP_NUM_THREADS", grant)
            with caplog.at_level("INFO", logger="dlpipe.runtime"):
                runtime.pin_threads("train_houses", count)
            assert torch.get_num_threads() == count
            assert f"train_houses: torch threads {count} (params.yaml threads.train_houses), not the engine's " \
                   f"{grant}" in caplog.text
    finally:
        torch.set_num_threads(before)


def test_the_thread_count_is_part_of_a_checkpoints_identity():
    import dlpipe.stages.train_houses  # noqa: F401  (run_identity reads its STAGE)

    params = load_params(REPO / "params.yaml")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run_identity("dlpipe.stages.train_houses", params, [], lr=0.1)
        torch.set_num_threads(2)
        two = run_identity("dlpipe.stages.train_houses", params, [], lr=0.1)
        assert one != two and run_identity("dlpipe.stages.train_houses", params, [], lr=0.1) == two
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_a_lenet_experiment_leaves_the_dcgan_metrics_byte_identical(tiny_dvc_run, tmp_path):
    """lenet.* retrains LeNet and nothing of the DCGAN: its FID network is train_fid_lenet's."""
    repo, env = clone_run(tiny_dvc_run, tmp_path / "repo")
    watched = ("reports/metrics/dcgan.json", "reports/details/dcgan.json", "reports/fid/dcgan.json", "models/fid_lenet.pt")
    before = {rel: (repo / rel).read_bytes() for rel in (*watched, "models/lenet.pt")}
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    write_params(repo / "params.yaml", {"lenet.train.epochs": raw["lenet"]["train"]["epochs"] + 1})
    proc = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    ran = set(RAN.findall(proc.stdout + proc.stderr))
    assert {"train_lenet", "evaluate_lenet"} <= ran, ran
    assert not ran & {"train_fid_lenet", "train_dcgan", "evaluate_dcgan"}, ran
    assert (repo / "models/lenet.pt").read_bytes() != before["models/lenet.pt"]  # the knob did retrain LeNet
    for rel in watched:
        assert (repo / rel).read_bytes() == before[rel], rel
    # ...and the stage graph says why: nothing upstream of evaluate_dcgan reads a LeNet training
    # key. lenet.data and lenet.prepare make the classifier images, which the DCGAN trains on.
    stages = {stage.name: stage for stage in load_stages(repo / "dvc.yaml")}
    upstream, todo = set(), ["evaluate_dcgan"]
    made = {out: stage.name for stage in stages.values() for out in stage.outs}
    while todo:
        name = todo.pop()
        upstream.add(name)
        todo.extend(made[dep] for dep in stages[name].deps if dep in made and made[dep] not in upstream)
    data_keys = ("lenet.data", "lenet.prepare")
    assert not [key for name in upstream for key in stages[name].params
                if key.startswith("lenet") and not key.startswith(data_keys)], upstream
