"""``python -m dlpipe``: --list names every stage with what it does; <stage> --help says what
the stage reads and writes, from its STAGE declaration (the same facts dvc.yaml is made of)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from conftest import engine_env

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dlpipe", *args], cwd=REPO, env=engine_env(),
                          capture_output=True, text=True, timeout=120)


def test_list_names_every_stage_of_dvc_yaml_with_its_description():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    proc = cli("--list")
    assert proc.returncode == 0, proc.stderr
    listed = dict(line.split(None, 1) for line in proc.stdout.splitlines())
    assert listed == {name: stage["desc"] for name, stage in stages.items()}


def test_stage_help_says_what_it_reads_and_writes():
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["evaluate_houses"]
    proc = cli("evaluate_houses", "--help")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in proc.stdout.splitlines()[2:]}
    assert lines["params"].split(", ") == stage["params"]
    assert lines["reads"].split(", ") == [d for d in stage["deps"] if not d.startswith("src/")]
    written = [next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"] + stage["metrics"] + stage["plots"]]
    assert lines["writes"].split(", ") == written


def test_an_unknown_stage_is_refused_naming_the_choices():
    proc = cli("train_everything")
    assert proc.returncode == 2 and "invalid choice: 'train_everything'" in proc.stderr, proc.stderr
