"""Figure 5: the pipeline's time to the original recipes' quality, against those recipes.

LeNet (the pieces of ``benchmarks.lenet``): the tutorial's
recipe as written (PIL + torchvision transforms, DataLoader batch 4, 2 workers,
SGD lr 0.001 momentum 0.9, 2 epochs), with torch's default threads and with 1
thread; its 2-epoch test accuracy is the target. Against it, the pipeline's
training (``pipeline_to_accuracy``: train_lenet's loaders, model, optimizer,
schedule, ``loop.train_one_epoch``), stopped after the first epoch whose test
accuracy reaches the target, with the default params and with named params
variants (``LENET_VARIANTS``: real params.yaml settings, read through the
schema like any params file). The LR range test that ``lr: auto`` needs is
timed as a side of its own.

Houses (the pieces of ``benchmarks.seed_houses``): the original recipe's plain loop (full
batch, up to 100,000 Adam iterations, its early stop) on the prepared features;
its final validation RMSLE is the target. Against it, train_houses' training
stopped after the first epoch whose validation RMSLE is at or under the target.

Every side runs in alternation (``timing.alternate``); the figures are the
ratios of medians: reference seconds / pipeline seconds (> 1: the pipeline is
faster), against the better of the reference's thread settings.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Iterator

import torch

from benchmarks.timing import alternate, medians, quiet, ratio, variant_params

# Time-to-accuracy settings of the pipeline for digits (params.yaml keys; not the defaults,
# which train 60 epochs for the best final accuracy). Reproduce one with `dvc exp run -S key=value ...`.
# ``threads.train_lenet``: the stage's torch threads under either engine.
ADAM = {"name": "adam", "weight_decay": 5.0e-4}  # with lenet.train.optimizer.weight_decay
TIME_TO_ACCURACY = {"lenet.train.optimizer": ADAM, "lenet.train.lr": 0.01, "lenet.train.batch_size": 32,
                    "lenet.train.epochs": 1, "lenet.augment.crop_padding": 0}
LENET_VARIANTS = {
    "time_to_accuracy": TIME_TO_ACCURACY,
    "time_to_accuracy_1_thread": {**TIME_TO_ACCURACY, "threads.train_lenet": 1},
    "time_to_accuracy_augmented": {"lenet.train.optimizer": ADAM, "lenet.train.lr": 0.006,
                                   "lenet.train.batch_size": 32, "lenet.train.epochs": 2},
}
LENET_BAR = 5.0  # target: the pipeline at least 5x faster than the tutorial's better thread setting


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def speedups(times: dict[str, list[float]], references: list[str], candidates: list[str]) -> dict:
    """Per candidate: best reference median / candidate median, and against each reference."""
    mid = medians(times)
    best = min(references, key=lambda name: mid[name])
    return {"best_reference": best, "median_s": mid,
            "speedup": {name: {"vs_best_reference": ratio(mid[best], mid[name]),
                               **{f"vs_{ref}": ratio(mid[ref], mid[name]) for ref in references}}
                        for name in candidates}}


# --------------------------------------------------------------------------- LeNet


def lenet_vs_seed(params, device: torch.device, repeats: int, variants: dict | None = None,
                  params_path: str = "params.yaml", log: Callable[[str], None] = print) -> dict:
    from benchmarks.lenet import pipeline_to_accuracy, seed_recipe, time_range_test
    from dlpipe.data.classifier_prepared import load_meta, load_split

    variants = LENET_VARIANTS if variants is None else variants
    meta = load_meta()
    train, test = load_split("train"), load_split("test")
    classes = len(meta["class_names"])
    target = seed_recipe(train, test, classes, None, params.seed)["test_accuracy"]  # also warms up
    log(f"  lenet: the tutorial's 2-epoch test accuracy (target): {target:.4f}")
    configs = {"pipeline_default": params, **{f"pipeline_{name}": variant_params(overrides, params_path)
                                              for name, overrides in variants.items()}}

    def pipeline(p):
        def run():
            with torch_threads(p.threads["train_lenet"]):  # the threads the stage would use
                return pipeline_to_accuracy(p, meta, target, device)
        return run

    sides = {"seed_as_written": lambda: seed_recipe(train, test, classes, None, params.seed),
             "seed_1_thread": lambda: seed_recipe(train, test, classes, 1, params.seed),
             **{name: pipeline(p) for name, p in configs.items()},
             "lr_range_test": lambda: {"seconds": time_range_test(params, meta, device)}}
    sides = {name: quiet(side) for name, side in sides.items()}
    results: dict[str, list] = {}
    times = alternate(sides, repeats, warmup=1, seconds_of=lambda r: r.get("train_s", r.get("seconds")),
                      results=results)
    record = speedups(times, ["seed_as_written", "seed_1_thread"], list(configs))
    mid = record["median_s"]
    for name in configs:
        last = results[name][-1]
        reached = all(r["reached"] for r in results[name])
        record["speedup"][name]["with_range_test"] = (
            ratio(mid[record["best_reference"]], mid[name] + mid["lr_range_test"])
            if configs[name].lenet.train.lr == "auto" else record["speedup"][name]["vs_best_reference"])
        if not reached:  # never reached the target: no time to the target exists
            record["speedup"][name] = {key: None for key in record["speedup"][name]}
        record.setdefault("configs", {})[name] = {
            "overrides": variants.get(name.removeprefix("pipeline_"), {}), "reached": reached,
            "epochs": last["epochs"], "test_accuracy": last["test_accuracy"], "lr": last["lr"],
            "threads": configs[name].threads["train_lenet"]}
        log(f"  lenet {name}: {mid[name]:.3f} s to {target:.4f} ({last['epochs']} epoch(s), reached {reached}); "
            f"seed {record['best_reference']} {mid[record['best_reference']]:.3f} s -> "
            f"{record['speedup'][name]['vs_best_reference'] or 0:.2f}x (as written: "
            f"{record['speedup'][name]['vs_seed_as_written'] or 0:.2f}x)")
    record.update({"target_accuracy": target, "runs_s": times, "threads": torch.get_num_threads(), "bar": LENET_BAR,
                   "seed_accuracy": {name: [r["test_accuracy"] for r in results[name]]
                                     for name in ("seed_as_written", "seed_1_thread")}})
    return record


# --------------------------------------------------------------------------- houses


def houses_to_rmsle(params, target: float, device: torch.device) -> dict:
    """train_houses' training (its loaders, model, optimizer, schedule, lr), stopped at the first
    epoch whose validation RMSLE is at or under ``target``; the time includes loading the tensors."""
    from dlpipe.stages._houses import LR_FIND_JSON, build_model, loaders
    from dlpipe.training import loop, lr_finder
    from dlpipe.training.tasks import log_price_regression

    cfg, task = params.houses.train, log_price_regression()
    lr = lr_finder.resolve_lr(cfg.lr, LR_FIND_JSON, "houses.train.lr")
    start = time.perf_counter()
    train, val = loaders(params, device)
    model = build_model(params, train, device)
    value, epoch = math.inf, 0
    for epoch in loop.train_epochs(model, train, task.loss_fn, loop.optimization(model.parameters(), cfg, lr,
                                                                                  len(train)), cfg.epochs):
        value = loop.evaluate(model, val, task)["val_rmsle"]
        if value <= target:
            break
    return {"seconds": time.perf_counter() - start, "epochs": epoch, "val_rmsle": value,
            "reached": value <= target, "lr": lr}


def houses_range_test(params, device: torch.device) -> dict:
    from dlpipe.stages._houses import build_model, loaders
    from dlpipe.training.lr_finder import range_test
    from dlpipe.training.schedules import build_optimizer
    from dlpipe.training.tasks import log_price_regression

    start = time.perf_counter()
    train, _ = loaders(params, device)
    model = build_model(params, train, device)
    optimizer = build_optimizer(model.parameters(), params.houses.train, lr=params.houses.lr_find.start_lr)
    range_test(model, optimizer, log_price_regression().loss_fn, train, params.houses.lr_find, device)
    return {"seconds": time.perf_counter() - start}


def houses_vs_seed(params, device: torch.device, repeats: int, n_iterations: int = 100_000, seed: int = 0,
                   log: Callable[[str], None] = print) -> dict:
    from benchmarks.seed_houses import seed_loop
    from dlpipe.data.houses_prepared import load_split

    train, val = load_split("train"), load_split("val")
    data = (train["x"], torch.expm1(train["y"]), val["x"], torch.expm1(val["y"]))

    def seed_run(threads: int | None) -> dict:
        with torch_threads(threads):
            return seed_loop(*data, seed, n_iterations)

    reference = seed_run(None)  # also warms up
    target = reference["val_rmsle"]
    if math.isnan(target):
        raise ValueError(f"the original loop with seed {seed} ends in NaN; choose another seed")
    log(f"  houses: the original loop (seed {seed}) stops after {reference['iterations']} iterations at "
        f"val RMSLE {target:.4f} (target)")
    sides = {"seed_as_written": lambda: seed_run(None), "seed_1_thread": lambda: seed_run(1),
             "pipeline_default": lambda: houses_to_rmsle(params, target, device),
             "lr_range_test": lambda: houses_range_test(params, device)}
    sides = {name: quiet(side) for name, side in sides.items()}
    quiet(lambda: houses_to_rmsle(params, target, device))()  # warms the pipeline's side (the original's is warm)
    results: dict[str, list] = {}
    times = alternate(sides, repeats, warmup=0, seconds_of=lambda r: r["seconds"], results=results)
    record = speedups(times, ["seed_as_written", "seed_1_thread"], ["pipeline_default"])
    mid, last = record["median_s"], results["pipeline_default"][-1]
    reached = all(r["reached"] for r in results["pipeline_default"])
    speed = record["speedup"]["pipeline_default"]
    speed["with_range_test"] = ratio(mid[record["best_reference"]], mid["pipeline_default"] + mid["lr_range_test"])
    if not reached:
        record["speedup"]["pipeline_default"] = {key: None for key in speed}
    record.update({"target_val_rmsle": target, "seed": seed, "seed_iterations": reference["iterations"],
                   "runs_s": times, "threads": torch.get_num_threads(),
                   "pipeline": {"reached": reached, "epochs": last["epochs"], "val_rmsle": last["val_rmsle"],
                                "lr": last["lr"]}})
    log(f"  houses pipeline_default: {mid['pipeline_default']:.3f} s to {target:.4f} ({last['epochs']} epochs, "
        f"reached {reached}); seed {record['best_reference']} {mid[record['best_reference']]:.3f} s -> "
        f"{record['speedup']['pipeline_default']['vs_best_reference'] or 0:.2f}x")
    return record
