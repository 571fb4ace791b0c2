"""What the pretrained backbone adds: the transfer stages at paired seeds.

Each seed runs the real stages (``main(params)``, from fetch_transfer to
evaluate_transfer, the backbone pretrained at that seed) in its own folder
with ``seed`` and ``transfer.data.split_seed`` both set to it; within a seed
the pretrained and the random backbone share the split, the fc start and the
batches (``dlpipe.stages._transfer.BACKBONES``). The classifier data are
prepared once and copied (``lenet.prepare.split_seed`` stays the default).
Every process runs torch on 1 thread. Prints one JSON line per seed and a
table (mean, sd, min, max) of each accuracy and gain; writes them to --out.

    python -m benchmarks.transfer_gain [--seeds 42 1 2 ...] [--jobs 2] [--set KEY=VALUE ...]
    python -m benchmarks.transfer_gain --finetune-only --set transfer.finetune.train.epochs=5

``--finetune-only`` reruns the fine-tuning stages and the evaluation in the
folders of an earlier run (``--work``), with the head weights kept.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from benchmarks.timing import override_raw

REPO = Path(__file__).resolve().parents[1]
FIGURES = ("head_val_accuracy", "random_head_val_accuracy", "head_gain",
           "finetune_val_accuracy", "random_finetune_val_accuracy", "finetune_gain")
STAGES = ("fetch_transfer", "prepare_transfer", "pretrain_transfer_backbone", "lr_find_transfer_head",
          "train_transfer_head", "lr_find_transfer_finetune", "train_transfer_finetune", "evaluate_transfer")
FINETUNE_STAGES = STAGES[-3:]
CLASSIFIER = "data/prepared/classifier"


def seed_overrides(seed: int, overrides: dict) -> dict:
    return {"device": "cpu", "seed": seed, "transfer.data.split_seed": seed, **overrides}


def write_params(folder: Path, overrides: dict) -> None:
    raw = override_raw(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    (folder / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def run_one(folder: Path, stages: tuple[str, ...]) -> None:
    """In a child process: the named stages' main on ``folder/params.yaml``."""
    import importlib

    import torch

    from dlpipe.config import load_params

    torch.set_num_threads(1)
    os.chdir(folder)
    params = load_params(Path("params.yaml"))
    for stage in stages:
        importlib.import_module(f"dlpipe.stages.{stage}").main(params)


def prepare_classifier(work: Path, overrides: dict) -> Path:
    shared = work / "classifier"
    if not (shared / CLASSIFIER).is_dir():
        shared.mkdir(parents=True, exist_ok=True)
        write_params(shared, {"device": "cpu", **overrides})
        child(shared, ("fetch_classifier", "prepare_classifier"))
    return shared / CLASSIFIER


def child(folder: Path, stages: tuple[str, ...]) -> float:
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(folder / "run.log", "a") as log:
        subprocess.run([sys.executable, "-m", "benchmarks.transfer_gain", "--child", str(folder), *stages],
                       check=True, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    return time.perf_counter() - start


def measure_seed(work: Path, seed: int, overrides: dict, classifier: Path | None, finetune_only: bool) -> dict:
    folder = work / f"seed_{seed}"
    if not finetune_only:
        shutil.rmtree(folder, ignore_errors=True)
        (folder / CLASSIFIER).parent.mkdir(parents=True)
        shutil.copytree(classifier, folder / CLASSIFIER)
    elif not (folder / "models/transfer_head_random.pt").is_file():
        raise SystemExit(f"{folder}: no earlier run to fine-tune again (run without --finetune-only first)")
    write_params(folder, seed_overrides(seed, overrides))
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # every training from its start
    seconds = child(folder, FINETUNE_STAGES if finetune_only else STAGES)
    details = json.loads((folder / "reports/details/transfer.json").read_text())
    return {"seed": seed, "seconds": round(seconds, 1), **{k: details[k] for k in FIGURES},
            "val_images": details["val_images"]}


def summarise(rows: list[dict]) -> dict:
    return {name: {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                   "min": min(values), "max": max(values)}
            for name in FIGURES + ("seconds",) for values in [[row[name] for row in rows]]}


def table(summary: dict) -> str:
    lines = ["| figure | mean | sd | min | max |", "|---|---|---|---|---|"]
    for name in FIGURES:
        s = summary[name]
        lines.append(f"| `{name}` | {s['mean']:+.3f} | {s['sd']:.3f} | {s['min']:+.3f} | {s['max']:+.3f} |"
                     if name.endswith("gain") else
                     f"| `{name}` | {s['mean']:.3f} | {s['sd']:.3f} | {s['min']:.3f} | {s['max']:.3f} |")
    return "\n".join(lines)


def parse_set(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    return overrides


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        run_one(Path(argv[1]), tuple(argv[2:]))
        return {}
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    parser.add_argument("--jobs", type=int, default=2, help="seeds at once, one torch thread each")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="params overrides (dotted keys)")
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks/out/transfer_gain")
    parser.add_argument("--out", type=Path, default=REPO / "reports/transfer_gain.json")
    parser.add_argument("--finetune-only", action="store_true")
    args = parser.parse_args(argv)
    overrides = parse_set(args.set)
    args.work.mkdir(parents=True, exist_ok=True)
    classifier = None if args.finetune_only else prepare_classifier(args.work, overrides)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda s: measure_seed(args.work, s, overrides, classifier, args.finetune_only),
                             args.seeds))
    for row in rows:
        print(json.dumps(row))
    result = {"seeds": args.seeds, "overrides": overrides, "finetune_only": args.finetune_only, "runs": rows,
              "summary": summarise(rows)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result["summary"]))
    print(f"seconds per seed (one process, 1 thread): mean {result['summary']['seconds']['mean']:.0f}")
    return result


if __name__ == "__main__":
    main()
