"""``python -m benchmarks``: the pipeline's performance, measured against references.

Run from the repository root after ``dvc repro`` (the in-process figures read
the prepared data; the clean-state run needs only PyPI, for the houses wheel). Writes
reports/bench.json (atomically) and prints a table. Every comparison runs its
sides in this one process run, alternating, over several repeats; the figures
are medians and ratios of medians (absolute times on a shared machine are noise).

  pipeline   1-3: clean copies of the repository: dvc repro twice (median wall, peak RSS), no-op
             dvc repro / snakemake --cores 2 / dvc status, one changed training param
  overhead   4: per model, the pipeline's loop against a bare PyTorch loop
  reference  5: LeNet time-to-accuracy and houses time-to-RMSLE against the original recipes
  lr_cost    6: each LR range test stage against the training stage it serves
  houses_cv  7: scikit-learn's RidgeCV and boosted trees on cv_houses' folds, beside its MLP
  flops      8: per model, the training step's GFLOP/s against the float32 matmul peak, and the
             share of the step outside compute
  tuning     channels_last, bf16 autocast, torch.compile, threads (only with --tuning)

    python -m benchmarks                     # everything but tuning (over 42 min on 2 cores: see docs/performance.md)
    python -m benchmarks --quick             # tiny settings, 1 repeat: checks that it all runs
    python -m benchmarks --skip-pipeline --tuning
    python -m benchmarks --only overhead,tuning --device cuda --output reports/bench_cuda.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

PARTS = ("pipeline", "overhead", "reference", "lr_cost", "houses_cv", "flops", "tuning")
INCREMENTAL_KEY = "houses.train.epochs"
QUICK_INPROCESS = {"transfer.augment.image_size": 32, "dcgan.train.max_batches": 10}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings and 1 repeat (a check, not figures)")
    parser.add_argument("--skip-pipeline", action="store_true", help="leave out the clean-state pipeline run (1-3)")
    parser.add_argument("--tuning", action="store_true", help="also measure the CPU/CUDA tuning options")
    parser.add_argument("--only", help=f"comma-separated parts to run, of: {', '.join(PARTS)}")
    parser.add_argument("--tuning-options", help="comma-separated tuning options, of: channels_last, autocast, "
                        "compile, threads_1 (default: all; --quick: all but compile)")
    parser.add_argument("--repeats", type=int, help="timed rounds per comparison (default 5; --quick 1)")
    parser.add_argument("--pipeline-runs", type=int, help="clean-state dvc repro runs, their median wall "
                        "reported (default 2; --quick 1)")
    parser.add_argument("--stage-repeats", type=int, help="rounds of whole stages in lr_cost (default 3; --quick 1)")
    parser.add_argument("--device", help="device of the in-process figures (default: params' device)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--output", default="reports/bench.json")
    parser.add_argument("--workdir", help="parent folder of the clean copy (default: the system's temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the clean copy after the run")
    return parser.parse_args(argv)


def selected_parts(args: argparse.Namespace) -> list[str]:
    if args.only:
        parts = [part.strip() for part in args.only.split(",") if part.strip()]
        unknown = sorted(set(parts) - set(PARTS))
        if unknown:
            raise SystemExit(f"error: --only: unknown part(s) {', '.join(unknown)}; of: {', '.join(PARTS)}")
    else:
        parts = [part for part in PARTS if part != "tuning" or args.tuning]
    if args.skip_pipeline:
        parts = [part for part in parts if part != "pipeline"]
    return parts


@contextlib.contextmanager
def workspace(parent: str | None, keep: bool, log=print) -> Iterator[Path]:
    """A temporary folder for the clean copy, under ``parent`` (made if missing); ``keep``: left
    in place (and named) afterwards."""
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    if keep:
        path = Path(tempfile.mkdtemp(prefix="dlpipe-bench-", dir=parent))
        log(f"  the clean copy stays in {path}")
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="dlpipe-bench-", dir=parent) as tmp:
            yield Path(tmp)


def run_parts(args: argparse.Namespace, parts: list[str], log=print) -> tuple[dict, dict]:
    import torch

    from dlpipe import runtime
    from dlpipe.config import load_params
    from dlpipe.errors import PipelineError

    repeats = args.repeats or (1 if args.quick else 5)
    stage_repeats = args.stage_repeats or (1 if args.quick else 3)
    params = load_params(args.params)
    device = runtime.setup(params.seed, args.device or params.device)
    log(f"bench: parts {', '.join(parts)}; device {device}, {torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} CPUs; repeats {repeats}{' (quick)' if args.quick else ''}")
    results, seconds, errors = {}, {}, {}
    for part in parts:
        log(f"[{part}]")
        start = time.perf_counter()
        try:
            results[part] = run_part(part, args, params, device, repeats, stage_repeats, log)
        except PipelineError as exc:  # missing prepared data, say: the other parts still run
            errors[part] = str(exc)
            log(f"  {part}: not measured: {exc}")
        seconds[part] = time.perf_counter() - start
    return results, {"seconds_per_part": seconds, "repeats": repeats, "stage_repeats": stage_repeats,
                     "device": str(device), "errors": errors}


def run_part(part: str, args: argparse.Namespace, params, device, repeats: int, stage_repeats: int, log) -> dict:
    from benchmarks import timing

    quick = args.quick
    if part == "pipeline":
        from dlpipe import tiny
        from benchmarks.pipeline_run import clean_run

        with workspace(args.workdir, args.keep, log) as work:
            return clean_run(Path.cwd(), work, tiny.OVERRIDES if quick else None,
                             max(1, min(repeats, 3)) if quick else repeats, INCREMENTAL_KEY,
                             args.pipeline_runs or (1 if quick else 2), log)
    if part == "overhead":
        from benchmarks.overhead import loop_overhead

        inproc = timing.variant_params(QUICK_INPROCESS, args.params) if quick else params
        return loop_overhead(inproc, device, repeats, 0.2 if quick else 1.0, log=log)
    if part == "reference":
        from benchmarks.reference import houses_vs_seed, lenet_vs_seed

        return {"lenet": lenet_vs_seed(params, device, repeats, params_path=args.params, log=log),
                "houses": houses_vs_seed(params, device, repeats, 3000 if quick else 100_000, log=log)}
    if part == "lr_cost":
        from dlpipe import tiny
        from benchmarks.lr_cost import lr_find_cost

        return lr_find_cost(Path.cwd(), stage_repeats, tiny.OVERRIDES if quick else None, log=log)
    if part == "houses_cv":
        from benchmarks.houses_cv import houses_cv
        from dlpipe.data.houses_prepared import PREPARED_DIR
        from dlpipe.stages._houses import CV_RECORD

        return houses_cv(PREPARED_DIR, CV_RECORD, quick, log=log)
    if part == "flops":
        from benchmarks.flops import QUICK_SIZES, gflops

        inproc = timing.variant_params(QUICK_INPROCESS, args.params) if quick else params
        return gflops(inproc, device, repeats, 0.2 if quick else 1.0, QUICK_SIZES if quick else None, log=log)
    from benchmarks.tuning import OPTIONS, tuning

    options = tuple(o.strip() for o in args.tuning_options.split(",")) if args.tuning_options else \
        tuple(o for o in OPTIONS if o != "compile" or not quick)
    if device.type != "cpu":
        options = tuple(o for o in options if o != "threads_1")  # torch threads: a CPU matter
    return tuning(device, 0.05 if quick else 1.0, repeats, options=options, log=log)


def main(argv: list[str] | None = None) -> int:
    from benchmarks import summary, timing
    from dlpipe.errors import PipelineError
    from dlpipe.io import write_json

    args = parse(argv)
    if not Path(args.params).is_file():
        print(f"error: {args.params} not found: run from the repository root", file=sys.stderr)
        return 2
    parts = selected_parts(args)
    try:
        results, run_info = run_parts(args, parts)
    except PipelineError as exc:  # bad params, no such device
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = summary.build(results, timing.machine(run_info["device"]), quick=args.quick,
                           command=" ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]),
                           run=run_info)
    write_json(args.output, report)
    print()
    print(timing.table(summary.rows(report)))
    print(f"\nwritten: {args.output}" + ("  (--quick: tiny settings, not figures)" if args.quick else ""))
    for part, message in run_info["errors"].items():
        print(f"error: part {part} not measured: {message}", file=sys.stderr)
    return 1 if run_info["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
