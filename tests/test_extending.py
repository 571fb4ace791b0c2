"""The newcomer route of docs/extending.md, taken in a copy of a finished tiny run: a new
stage (evaluate_houses_val, the houses weights on the validation split) written as its
module (with its STAGE declaration) and one params.yaml line, then `make generate`'s
command; DVC and Snakemake both pick it up, and DVC runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml
from conftest import clone_run

NEW_STAGE = '''"""Stage evaluate_houses_val: RMSLE of the best houses weights on the validation split."""

from __future__ import annotations

from pathlib import Path

import torch

from dlpipe import runtime
from dlpipe.config import Params
from dlpipe.data.houses_prepared import PREPARED_DIR, load_split
from dlpipe.declare import Stage
from dlpipe.io import write_json
from dlpipe.stages._houses import WEIGHTS, empty_model
from dlpipe.tensor_io import load_into

METRICS = Path("reports/metrics/houses_val.json")

STAGE = Stage(params=("device", "houses.model"), deps=(WEIGHTS, PREPARED_DIR), metrics=(METRICS,))


def main(params: Params) -> None:
    device = runtime.setup(0, params.device)
    val = load_split("val", device)
    model = empty_model(params, val["x"].shape[1]).to(device).eval()
    load_into(model, WEIGHTS)
    with torch.inference_mode():
        error = model(val["x"]).double() - val["y"].double()  # log prices: the RMSE is the RMSLE
    write_json(METRICS, {"val_rmsle": error.pow(2).mean().sqrt().item()})
'''


def sh(cmd: list[str], repo, env) -> str:
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{(proc.stdout + proc.stderr)[-3000:]}"
    return proc.stdout + proc.stderr


def test_a_new_stage_takes_its_module_and_one_params_line(tiny_dvc_run, tmp_path):
    repo, env = clone_run(tiny_dvc_run, tmp_path / "repo")
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "the finished run"], repo, env)

    # The two hand edits (the third file is a test like this one).
    (repo / "src/dlpipe/stages/evaluate_houses_val.py").write_text(NEW_STAGE)
    lines = (repo / "params.yaml").read_text().splitlines()
    lines.insert(lines.index("threads:") + 1, "  evaluate_houses_val: 1")
    (repo / "params.yaml").write_text("\n".join(lines) + "\n")
    sh([sys.executable, "-m", "dlpipe.declare"], repo, env)

    # By hand: the module and params.yaml. Generated: dvc.yaml and README.md's stage graph.
    changed = sorted(line[3:] for line in sh(["git", "status", "--porcelain"], repo, env).splitlines())
    assert changed == ["README.md", "dvc.yaml", "params.yaml", "src/dlpipe/stages/evaluate_houses_val.py"], changed
    assert "train_houses --> evaluate_houses & evaluate_houses_val" in (repo / "README.md").read_text()
    stage = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["evaluate_houses_val"]
    assert stage["cmd"] == "python -m dlpipe evaluate_houses_val"
    assert stage["params"] == ["threads.evaluate_houses_val", "device", "houses.model"]
    assert {"src/dlpipe/stages/evaluate_houses_val.py", "src/dlpipe/stages/_houses.py", "src/dlpipe/models/mlp.py",
            "models/houses.pt", "data/prepared/houses"} <= set(stage["deps"])
    assert stage["meta"]["resources"]["gpu"] == 1  # it reads `device`

    assert "evaluate_houses_val" in sh(["snakemake", "-n", "--cores", "1", "reports/metrics/houses_val.json"],
                                       repo, env)
    out = sh(["dvc", "repro", "evaluate_houses_val"], repo, env)
    assert "Running stage 'evaluate_houses_val'" in out and "Running stage 'train_houses'" not in out
    rmsle = json.loads((repo / "reports/metrics/houses_val.json").read_text())["val_rmsle"]
    reported = json.loads((repo / "reports/metrics/houses.json").read_text())["val_rmsle"]
    assert abs(rmsle - reported) < 1e-6, (rmsle, reported)  # the same weights on the same rows
