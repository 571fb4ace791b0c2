"""Figure 6: what each LR range test costs, as a fraction of the training stage it serves.

Both stages run as the engines run them, ``python -m dlpipe <stage>`` in a
process of their own (imports, data loading and writing included), in a
scratch folder that holds the params file and links to the prepared data (and
to the pretrained backbone the transfer stages start from), so nothing in the
repository is written. The range test and its training stage alternate; the
training's resumable checkpoint is removed before each training run so that
every run trains from scratch. ``fraction`` = median range test / median training.

``lr_find_transfer_finetune`` serves ``train_transfer_finetune`` only when
``transfer.finetune.train.lr`` is ``auto`` (the default takes a tenth of the
head's LR and does not read it); it is measured either way and says which.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import yaml

from benchmarks.timing import alternate, compare, override_raw

MODELS = ("houses", "lenet", "transfer_head", "transfer_finetune")
LINKED = ("data/prepared", "models/transfer_backbone.pt")


def serves(raw_params: dict, model: str) -> bool:
    """Whether training reads this model's range test with these params."""
    if model == "transfer_finetune":
        return raw_params["transfer"]["finetune"]["train"]["lr"] == "auto"
    section = raw_params["transfer"]["head"] if model == "transfer_head" else raw_params[model]
    return section["train"]["lr"] == "auto"


def scratch(root: Path, dest: Path, overrides: dict | None) -> Path:
    """A folder the stages can run in: params (with ``overrides``) and links to inputs."""
    raw = override_raw(yaml.safe_load((root / "params.yaml").read_text()), overrides or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for rel in LINKED:
        if (root / rel).exists():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink((root / rel).resolve(), dest / rel)
    return dest


def stage_runner(folder: Path, env: dict, stage: str) -> Callable[[], None]:
    def run() -> None:
        if stage.startswith("train_"):
            shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # no resuming: a full training
        proc = subprocess.run([sys.executable, "-m", "dlpipe", stage], cwd=folder, env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{stage} failed ({proc.returncode}) in {folder}:\n{proc.stderr[-3000:]}")
    return run


def lr_find_cost(root: Path, repeats: int, overrides: dict | None = None, models: tuple[str, ...] = MODELS,
                 log: Callable[[str], None] = print) -> dict:
    """{model: compare(lr_find, train) + fraction}; needs the prepared data (and the backbone
    for the transfer models) in ``root``; a model whose inputs are missing is skipped."""
    root = Path(root).resolve()
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=str(root / "src"))
    results = {}
    with tempfile.TemporaryDirectory(prefix="dlpipe-bench-lr-") as tmp:
        folder = scratch(root, Path(tmp), overrides)
        raw = yaml.safe_load((folder / "params.yaml").read_text())
        for model in models:  # in graph order: the finetune range test reads the head's weights
            needs = ["data/prepared"] + (["models/transfer_backbone.pt"] if model.startswith("transfer") else [])
            missing = [rel for rel in needs if not (folder / rel).exists()]
            if missing:
                results[model] = {"skipped": f"missing {', '.join(missing)} (run dvc repro first)"}
                log(f"  lr range test cost {model}: skipped ({results[model]['skipped']})")
                continue
            lr_stage, train_stage = f"lr_find_{model}", f"train_{model}"
            # One untimed round: the range test's JSON exists before training reads it.
            times = alternate({lr_stage: stage_runner(folder, env, lr_stage),
                               train_stage: stage_runner(folder, env, train_stage)}, repeats, warmup=1)
            record = compare(times, lr_stage, train_stage)
            record.update({"fraction": record["ratio"], "serves_training": serves(raw, model)})
            results[model] = record
            log(f"  lr range test cost {model}: {record['median_s'][lr_stage]:.2f} s vs training "
                f"{record['median_s'][train_stage]:.2f} s -> {record['fraction']:.3f}"
                + ("" if record["serves_training"] else " (its result is not read with these params)"))
    return results
