"""DCGAN settings compared by their FID along the way, without writing any output.

    python -m benchmarks.gan_sweep --set dcgan.train.batch_size=8 --every 10 --out sweep.json

Trains the generator in-process exactly as train_dcgan builds it (params.yaml
with ``--set`` overrides, validated by the schema) and, every ``--every``
epochs, scores the sampler with evaluate_dcgan's FID: the same LeNet features,
the same N real images and noise, the same untrained-generator ceiling. One
run shows where the FID settles, which the pipeline's single end-of-training
figure cannot. Needs a finished default run in the working directory
(data/prepared/gan, models/fid_lenet.pt); writes only ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import yaml

from benchmarks.timing import variant_params
from dlpipe import runtime
from dlpipe.config import Params
from dlpipe.io import write_json
from dlpipe.metrics.fid import frechet_distance
from dlpipe.pictures.sample_grid import to_uint8
from dlpipe.stages import evaluate_dcgan
from dlpipe.stages._dcgan import build_networks, generate
from dlpipe.stages.train_dcgan import setup_training, train
from dlpipe.training.state import RunFiles

log = logging.getLogger(__name__)


def parse_overrides(items: list[str]) -> dict:
    """``key=value`` pairs (values read as YAML, as ``dvc exp run -S`` does)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def fid_trace(params: Params, every: int) -> dict:
    """Train with ``params``; the FID of the sampler (the EMA when on) and of the raw generator
    every ``every`` epochs and after the last one."""
    threads = params.threads["train_dcgan"]
    runtime.pin_threads("train_dcgan", threads)
    device = runtime.setup(params.seed, params.device)
    cfg = params.dcgan.train
    run = setup_training(params, device)
    features, _ = evaluate_dcgan.lenet_features(params, device)
    real, _, _ = evaluate_dcgan.real_samples(params, run.meta, device)
    z = evaluate_dcgan.eval_noise(params, len(real), device)
    untrained, _ = build_networks(params, run.meta["nc"], device)
    ceiling = frechet_distance(features, real, to_uint8(generate(untrained, z)))
    trace, started, scoring = [], time.perf_counter(), [0.0]  # scoring: seconds spent in score(), not training

    def score(epoch: int, sampler) -> None:
        if epoch % every and epoch != cfg.epochs:
            return
        begun = time.perf_counter()
        seconds = begun - started - scoring[0]
        fid = frechet_distance(features, real, to_uint8(generate(sampler, z)))
        raw = frechet_distance(features, real, to_uint8(generate(run.generator, z)))
        trace.append({"epoch": epoch, "fid": fid, "fid_raw_generator": raw, "fid_over_ceiling": fid / ceiling,
                      "train_s": seconds})
        scoring[0] += time.perf_counter() - begun
        log.info("epoch %d: fid %.2f (raw generator %.2f), %.4f x ceiling, %.0f s", epoch, fid, raw,
                 fid / ceiling, seconds)

    result = train(run, params, on_epoch_end=score, files=RunFiles("gan_sweep"))
    last = [row for row in result.history if row["epoch"] == cfg.epochs]
    return {"fid_ceiling": ceiling, "fid_samples": len(real), "trace": trace,
            "last_epoch_d_x": sum(r["d_x"] for r in last) / len(last),
            "last_epoch_d_g_z": sum(r["d_g_z1"] for r in last) / len(last),
            "threads": threads}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gan_sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params override")
    parser.add_argument("--every", type=int, default=10, help="score every this many epochs")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", help="JSON file for the trace")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = parse_overrides(args.set)
    result = {"overrides": overrides, **fid_trace(variant_params(overrides, args.params), max(args.every, 1))}
    if args.out:
        write_json(args.out, result)
    best = min(result["trace"], key=lambda row: row["fid"])
    print(json.dumps({"overrides": overrides, "final": result["trace"][-1], "best": best}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
