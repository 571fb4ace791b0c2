"""Snakemake's config reaches the stages: `snakemake --config seed=7` runs each job with the
values Snakemake holds (params.yaml plus the override, validated by the same schema), so it
makes the same bytes as `dvc exp run -S seed=7`, and other bytes than seed 42's."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from conftest import clone_run, run

# The houses chain below evaluate_houses: seed reaches lr_find_houses and train_houses.
TARGET = "evaluate_houses"
SEEDED = ("reports/lr_find/houses.json", "models/houses.pt", "dvclive/train_houses/plots/metrics/train_loss.tsv",
          "dvclive/train_houses/metrics.json",
          "reports/metrics/houses.json", "reports/submission.csv", "reports/plots/houses/val_predictions.csv")


@pytest.mark.slow
def test_snakemake_config_and_dvc_set_param_make_the_same_bytes(tiny_dvc_run, tmp_path):
    seed42 = {rel: (tiny_dvc_run.repo / rel).read_bytes() for rel in SEEDED}

    snake, env = clone_run(tiny_dvc_run, tmp_path / "snake")
    params_before = (snake / "params.yaml").read_bytes()
    run(["snakemake", TARGET, "--cores", "2", "--forceall", "--config", "seed=7"], snake, env)
    assert (snake / "params.yaml").read_bytes() == params_before  # the override lives in Snakemake's config
    log = (snake / "logs/train_houses.log").read_text()
    written = list((snake / ".snakemake/dlpipe").glob("params-*.yaml"))
    assert len(written) == 1 and yaml.safe_load(written[0].read_text())["seed"] == 7, written

    dvc, env = clone_run(tiny_dvc_run, tmp_path / "dvc")
    run(["dvc", "exp", "run", "-S", "seed=7", TARGET], dvc, env)
    assert yaml.safe_load((dvc / "params.yaml").read_text())["seed"] == 7

    for rel in SEEDED:
        assert (snake / rel).read_bytes() == (dvc / rel).read_bytes(), rel
    assert (snake / "models/houses.pt").read_bytes() != seed42["models/houses.pt"], log[-2000:]
    assert (snake / "reports/lr_find/houses.json").read_bytes() != seed42["reports/lr_find/houses.json"]


def test_snakemake_refuses_a_config_override_the_schema_refuses(tiny_dvc_run, tmp_path):
    snake, env = clone_run(tiny_dvc_run, tmp_path / "snake")
    proc = subprocess.run(["snakemake", TARGET, "--cores", "1", "-n", "--config", "seed=-1"], cwd=snake, env=env,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Error validating config file" in out and "seed" in out, out[-2000:]


def test_without_overrides_the_jobs_read_params_yaml(tiny_dvc_run, tmp_path):
    snake, env = clone_run(tiny_dvc_run, tmp_path / "snake")
    proc = run(["snakemake", TARGET, "--cores", "1", "-n", "--forceall", "--printshellcmds"], snake, env)
    plan = proc.stdout + proc.stderr
    assert "python -m dlpipe train_houses" in plan and "--params" not in plan, plan[-2000:]
    assert not (snake / ".snakemake/dlpipe").exists()
