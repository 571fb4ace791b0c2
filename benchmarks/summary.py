"""reports/bench.json from the parts' records, and the rows of the printed table.

Pure functions: every figure is computed from the medians the parts recorded
(``details`` keeps those records whole), so a reader can recompute any ratio.
A part that did not run leaves its figures ``null``.
"""

from __future__ import annotations

import statistics

# The bars (#8; LeNet's from #3).
BARS = {"pipeline_wall_s": 300.0, "pipeline_peak_rss_mib": 4096.0, "noop_dvc_repro_s": 3.0,
        "noop_snakemake_s": 3.0, "loop_overhead": 1.10, "lenet_speedup_vs_seed": 5.0}


def _get(record: dict | None, *keys):
    for key in keys:
        if not isinstance(record, dict) or key not in record:
            return None
        record = record[key]
    return record


def pipeline_figures(run: dict | None) -> dict:
    noop = _get(run, "noop", "median_s") or {}
    return {
        "pipeline_wall_s": _get(run, "wall_s"),
        "pipeline_walls_s": [r["wall_s"] for r in _get(run, "runs") or []],
        "pipeline_peak_rss_mib": _get(run, "peak_tree_rss_mib"),
        "pipeline_polled_tree_rss_mib": _get(run, "polled_tree_rss_mib"),
        "pipeline_max_process_rss_mib": _get(run, "max_process_rss_mib"),
        "noop_dvc_repro_s": noop.get("dvc_repro"),
        "noop_snakemake_s": noop.get("snakemake"),
        "noop_dvc_status_s": noop.get("dvc_status"),
        "noop_nothing_ran": _get(run, "noop", "nothing_ran"),
        "incremental_stages_rerun": _get(run, "incremental", "ran"),
        "incremental_expected": _get(run, "incremental", "expected"),
        "incremental_change": _get(run, "incremental", "changed"),
    }


def overhead_figures(overhead: dict | None) -> dict:
    measured = {name: r for name, r in (overhead or {}).items() if "ratio" in r}
    return {
        "loop_overhead": {name: r["ratio"] for name, r in measured.items()} if overhead is not None else None,
        "samples_per_s": {name: {"pipeline": r["pipeline_per_s"], "bare": r["bare_per_s"],
                                 "batch_size": r["batch_size"]}
                          for name, r in measured.items()} if overhead is not None else None,
    }


def reference_figures(reference: dict | None) -> dict:
    lenet, houses = _get(reference, "lenet"), _get(reference, "houses")
    by_config = {name: s["vs_best_reference"] for name, s in (_get(lenet, "speedup") or {}).items()}
    reached = {name: s for name, s in by_config.items() if s is not None}
    best = max(reached, key=reached.get) if reached else None
    return {
        "lenet_speedup_vs_seed": reached[best] if best else None,
        "lenet_speedup_vs_seed_config": best,
        "lenet_speedup_vs_seed_default_params": by_config.get("pipeline_default"),
        "lenet_speedup_by_config": {name: _get(lenet, "speedup", name) for name in by_config} if lenet else None,
        "houses_speedup_vs_seed": _get(houses, "speedup", "pipeline_default", "vs_best_reference"),
        "houses_speedup_with_range_test": _get(houses, "speedup", "pipeline_default", "with_range_test"),
    }


def lr_cost_figures(lr_cost: dict | None, run: dict | None) -> dict:
    return {
        "lr_find_cost_fraction": ({name: r["fraction"] for name, r in lr_cost.items() if "fraction" in r}
                                  if lr_cost is not None else None),
        "lr_find_cost_fraction_pipeline_run": _get(run, "lr_find_fraction"),
    }


HOUSES_CV_MODELS = (("mlp", "MLP (cv_houses)"), ("ridge", "RidgeCV"), ("gbm", "GradientBoostingRegressor"))


def houses_cv_figures(houses_cv: dict | None) -> dict:
    """cv_rmsle (mean over the folds) and its sd per model, on cv_houses' folds."""
    if houses_cv is None:
        return {"houses_cv_rmsle": None, "houses_cv_rmsle_sd": None}
    measured = [name for name, _ in HOUSES_CV_MODELS if name in houses_cv]
    return {"houses_cv_rmsle": {name: houses_cv[name]["cv_rmsle"] for name in measured},
            "houses_cv_rmsle_sd": {name: houses_cv[name]["cv_rmsle_sd"] for name in measured}}


def sweep_gflop_s(sweep: dict[str, float]) -> dict[str, float]:
    """{n: GFLOP/s} of a matmul sweep's {n: median seconds}: n x n @ n x n is 2 n^3 FLOPs."""
    return {n: 2 * int(n) ** 3 / seconds / 1e9 for n, seconds in sweep.items()}


def peak_gflop_s(sweep: dict[str, float]) -> float:
    return max(sweep_gflop_s(sweep).values())


def model_gflops(record: dict, peaks: dict[str, dict[str, float]]) -> dict:
    """A model's figure 8 from its record (flops.measure_steps) and the sweeps by thread count. The
    shares are medians over the profiled rounds of each round's own ratio to its wall time."""
    step_s = statistics.median(record["runs_s"])
    gflop_s = record["flops_per_step"] / step_s / 1e9
    peak = peak_gflop_s(peaks[str(record["threads"])])
    profiled = record["profiled_runs_s"]
    counted_s = statistics.median([run["matmul_conv_s"] for run in profiled])
    return {"flops_per_step": record["flops_per_step"], "step_s": step_s, "gflop_s": gflop_s,
            "peak_gflop_s": peak, "fraction_of_peak": gflop_s / peak,
            "outside_compute_share": statistics.median([1 - run["aten_s"] / run["wall_s"] for run in profiled]),
            # of the step, in the ops that hold its FLOPs, and their own rate
            "matmul_conv_share": statistics.median([run["matmul_conv_s"] / run["wall_s"] for run in profiled]),
            "matmul_conv_gflop_s": record["flops_per_step"] / counted_s / 1e9 if counted_s else None,
            "profiler_slowdown": statistics.median([run["wall_s"] for run in profiled]) / step_s,
            "threads": record["threads"]}


def gflops_figures(flops: dict | None) -> dict:
    """The ``gflops`` block: per measured model its figures, and each thread count's sweep in GFLOP/s."""
    if flops is None:
        return {"gflops": None}
    peaks = flops["peak_s"]
    return {"gflops": {
        "models": {name: model_gflops(r, peaks) for name, r in flops["models"].items() if "runs_s" in r},
        "peak_sweep_gflop_s": {threads: sweep_gflop_s(sweep) for threads, sweep in peaks.items()},
    }}


def only_downstream(ran: list[str], expected: list[str]) -> bool:
    """The bar of figure 3: the stage that reads the changed key ran, and nothing outside
    it and its downstream did (a downstream stage whose inputs came out the same may be
    skipped by DVC)."""
    return bool(ran) and bool(expected) and expected[0] in ran and set(ran) <= set(expected)


def bars(report: dict) -> dict:
    """{figure: {value, bar, met}}; ``met`` is None where the figure was not measured."""
    out = {}
    for key in ("pipeline_wall_s", "pipeline_peak_rss_mib", "noop_dvc_repro_s", "noop_snakemake_s"):
        value = report.get(key)
        out[key] = {"value": value, "bar": f"< {BARS[key]:g}", "met": None if value is None else value < BARS[key]}
    # A no-op round that ran a stage is not a no-op: its time does not count as met.
    for engine, nothing_ran in (report.get("noop_nothing_ran") or {}).items():
        if f"noop_{engine}_s" in out and not nothing_ran:
            out[f"noop_{engine}_s"].update(met=False, bar=out[f"noop_{engine}_s"]["bar"] + " and nothing run")
    ran, expected = report.get("incremental_stages_rerun"), report.get("incremental_expected")
    out["incremental_stages_rerun"] = {"value": ran, "bar": "within " + ", ".join(expected) if expected else "",
                                       "met": None if ran is None else only_downstream(ran, expected or [])}
    for name, value in (report.get("loop_overhead") or {}).items():
        out[f"loop_overhead.{name}"] = {"value": value, "bar": f"<= {BARS['loop_overhead']:g}",
                                        "met": value <= BARS["loop_overhead"]}
    for key in ("lenet_speedup_vs_seed", "lenet_speedup_vs_seed_default_params"):
        value = report.get(key)
        out[key] = {"value": value, "bar": f">= {BARS['lenet_speedup_vs_seed']:g}",
                    "met": None if value is None else value >= BARS["lenet_speedup_vs_seed"]}
    return out


def build(results: dict, machine: dict, quick: bool, command: str, run: dict) -> dict:
    pipeline = results.get("pipeline")
    report = {"quick": quick, "command": command, "machine": machine, "parts_run": list(results),
              **pipeline_figures(pipeline), **overhead_figures(results.get("overhead")),
              **reference_figures(results.get("reference")), **lr_cost_figures(results.get("lr_cost"), pipeline),
              **houses_cv_figures(results.get("houses_cv")), **gflops_figures(results.get("flops"))}
    report["bars"] = bars(report)
    report["run"] = run
    report["details"] = results
    return report


def rows(report: dict) -> list[tuple]:
    """(figure, value, bar, met) per line of the printed table."""
    b = report["bars"]
    out = []
    walls = report.get("pipeline_walls_s") or []
    for key, label in (("pipeline_wall_s", f"1. pipeline from clean state, wall s (median of {len(walls)})"),
                       ("pipeline_peak_rss_mib", "1. peak RSS, MiB (process tree)"),
                       ("noop_dvc_repro_s", "2. no-op dvc repro, s"),
                       ("noop_snakemake_s", "2. no-op snakemake --cores 2, s")):
        out.append((label, b[key]["value"], b[key]["bar"], b[key]["met"]))
    out.append(("2. no-op dvc status, s", report.get("noop_dvc_status_s"), "", None))
    inc = b["incremental_stages_rerun"]
    out.append((f"3. stages rerun after {report.get('incremental_change') or 'one training param'}", inc["value"],
                inc["bar"], inc["met"]))
    for name, value in (report.get("loop_overhead") or {}).items():
        rate = report["samples_per_s"][name]
        out.append((f"4. loop / bare {name} ({rate['pipeline']:,.0f} vs {rate['bare']:,.0f} samples/s)", value,
                    b[f"loop_overhead.{name}"]["bar"], b[f"loop_overhead.{name}"]["met"]))
    out.append(("5. lenet seed time / pipeline time, default params",
                report.get("lenet_speedup_vs_seed_default_params"),
                b["lenet_speedup_vs_seed_default_params"]["bar"], b["lenet_speedup_vs_seed_default_params"]["met"]))
    best = report.get("lenet_speedup_vs_seed_config") or "best variant"
    out.append((f"5. lenet seed time / pipeline time, {best}", report.get("lenet_speedup_vs_seed"),
                b["lenet_speedup_vs_seed"]["bar"], b["lenet_speedup_vs_seed"]["met"]))
    out.append(("5. houses seed time / pipeline time (to its RMSLE)", report.get("houses_speedup_vs_seed"), "", None))
    for name, value in (report.get("lr_find_cost_fraction") or {}).items():
        out.append((f"6. lr_find / train stage time, {name}", value, "", None))
    for name, label in HOUSES_CV_MODELS:
        value = (report.get("houses_cv_rmsle") or {}).get(name)
        if value is not None:
            sd = report["houses_cv_rmsle_sd"][name]
            out.append((f"7. houses cv_rmsle, {label}" + (f" (sd {sd:.4f} over the folds)" if sd else ""), value,
                        "", None))
    gflops = report.get("gflops") or {}
    for threads, sweep in gflops.get("peak_sweep_gflop_s", {}).items():
        best = max(sweep, key=sweep.get)
        out.append((f"8. float32 matmul peak, {threads} thread(s), GFLOP/s (best n {best})", sweep[best], "", None))
    for name, f in gflops.get("models", {}).items():
        out.append((f"8. {name} GFLOP/s / peak ({f['gflop_s']:.2f} of {f['peak_gflop_s']:.1f} GFLOP/s, "
                    f"{f['threads']} thread(s))", f["fraction_of_peak"], "", None))
        out.append((f"8. {name} share of the step outside compute (step {f['step_s'] * 1e3:.2f} ms)",
                    f["outside_compute_share"], "", None))
    tuning = _get(report, "details", "tuning") or {}
    for net, record in tuning.items():
        for option, entry in record["options"].items():
            value = entry.get("stage_ratio", entry["step_ratio"])
            out.append((f"tuning {net} {option} (time / baseline)", value, "< 1 to adopt", None))
    return out
