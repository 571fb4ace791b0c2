"""The headline metrics over seeds: ``python -m benchmarks.seeds`` (``make seeds``).

For each seed S, a clean copy of the repository (the files git would commit,
as the clean-state benchmark makes it) runs ``dvc repro`` with the default
params except ``seed`` and every split seed set to S, so that both the
training randomness and the drawn splits vary. The DCGAN's metric network
(dcgan.feature_net) keeps its own fixed seed: every run is measured with the
same ruler. Copies run ``--jobs`` at a time, each stage on its declared
threads, so the figures are those of the default pipeline on this machine.

Writes ``--output`` (default reports/seeds.json: every run's metrics, and per
headline metric the mean, sample standard deviation, min and max) and prints
the table. A copy that fails is reported and left out of the summary, never
silently averaged.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.pipeline_run import copy_worktree, engine_env
from benchmarks.timing import cpu_model

# Every key that seeds a random draw: training, and the splits of the three datasets that are split here
# (houses twice: its validation split and its cross-validation folds).
SEED_KEYS = ("seed", "houses.prepare.split_seed", "houses.prepare.cv_split_seed", "lenet.prepare.split_seed",
             "transfer.data.split_seed")
# {metrics or details file: headline keys}; lower is better for houses and the FID, higher for accuracies.
HEADLINES = {
    "reports/metrics/houses.json": ("val_rmsle", "cv_rmsle"),
    "reports/metrics/lenet.json": ("test_accuracy",),
    "reports/details/transfer.json": ("head_val_accuracy", "finetune_val_accuracy", "head_gain", "finetune_gain"),
    "reports/details/dcgan.json": ("fid", "fid_ceiling", "fid_over_ceiling", "fid_over_floor"),  # every number
}


def seed_overrides(root: Path, seed: int, threads: int | None) -> dict:
    """Every seed key set to ``seed``; with ``threads``, every stage's thread count set to it."""
    overrides = {key: seed for key in SEED_KEYS}
    if threads:
        import yaml

        stages = yaml.safe_load((root / "params.yaml").read_text())["threads"]
        overrides.update({f"threads.{name}": threads for name in stages})
    return overrides


def run_seed(root: Path, workdir: Path, seed: int, timeout_s: float, threads: int | None = None) -> dict:
    """One clean copy with every seed key set to ``seed``, ``dvc repro``, its headline metrics."""
    repo = copy_worktree(root, workdir / f"seed_{seed}", seed_overrides(root, seed, threads))
    started = time.perf_counter()
    proc = subprocess.run(["dvc", "repro"], cwd=repo, env=engine_env(repo), capture_output=True, text=True,
                          timeout=timeout_s)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        return {"seed": seed, "ok": False, "seconds": seconds, "error": " | ".join(tail)}
    metrics = {}
    for rel, keys in HEADLINES.items():
        values = json.loads((repo / rel).read_text())
        metrics.update({key: values[key] for key in keys})
    shutil.rmtree(repo, ignore_errors=True)
    return {"seed": seed, "ok": True, "seconds": seconds, "metrics": metrics}


def summarise(runs: list[dict]) -> dict:
    """Per metric over the successful runs: n, mean, sample sd (0 for one run), min, max."""
    done = [run["metrics"] for run in runs if run["ok"]]
    summary = {}
    for key in (key for keys in HEADLINES.values() for key in keys):
        values = [metrics[key] for metrics in done]
        if values:
            summary[key] = {"n": len(values), "mean": statistics.fmean(values),
                            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                            "min": min(values), "max": max(values)}
    return summary


def table(summary: dict) -> str:
    lines = [f"{'metric':<24}{'n':>3}{'mean':>11}{'sd':>10}{'min':>11}{'max':>11}"]
    for key, row in summary.items():
        lines.append(f"{key:<24}{row['n']:>3}{row['mean']:>11.4f}{row['sd']:>10.4f}{row['min']:>11.4f}"
                     f"{row['max']:>11.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.seeds", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2, help="copies run at once (default: %(default)s)")
    parser.add_argument("--output", default="reports/seeds.json")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per copy's dvc repro")
    parser.add_argument("--threads", type=int, help="run every stage on this many threads instead of its "
                                                    "threads.<stage> (how far another thread count moves the metrics)")
    args = parser.parse_args(argv)
    root = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="dlpipe-seeds-") as tmp:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
            futures = [pool.submit(run_seed, root, Path(tmp), seed, args.timeout, args.threads)
                       for seed in args.seeds]
            runs = [future.result() for future in futures]
    for run in runs:
        state = "ok" if run["ok"] else f"FAILED: {run['error']}"
        print(f"seed {run['seed']}: {run['seconds']:.0f} s, {state}")
    summary = summarise(runs)
    record = {"cpu": cpu_model(), "jobs": args.jobs, "threads": args.threads or "threads.<stage>",
              "seed_keys": list(SEED_KEYS), "runs": runs, "summary": summary}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{record['cpu']}, {args.jobs} copies at once, seeds {args.seeds}, threads {record['threads']}")
    print(table(summary))
    return 0 if all(run["ok"] for run in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
