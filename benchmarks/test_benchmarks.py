"""The benchmark's pieces (``python -m benchmarks``) on tiny synthetic data.

No timing is asserted: the tests check relations the benchmark must keep,
that figures are ratios of the medians it records, that both sides of a
comparison compute the same thing on the same batches, that bench.json holds
the issue's keys, and that the expected incremental rerun follows the graph;
and that gan_sweep scores as the DCGAN stages do (on conftest's tiny GAN run).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest
import torch
import yaml

from benchmarks import flops, gan_sweep, houses_cv, overhead, pipeline_run, summary, timing
from benchmarks.conftest import REPO
from benchmarks.reference import speedups
from dlpipe.config import Adam, load_params
from dlpipe.data.loaders import TensorLoader
from dlpipe.errors import PipelineError
from dlpipe.workflow_graph import load_stages

REQUIRED_KEYS = ("pipeline_wall_s", "pipeline_peak_rss_mib", "noop_dvc_repro_s", "noop_snakemake_s",
                 "incremental_stages_rerun", "loop_overhead", "lenet_speedup_vs_seed", "houses_speedup_vs_seed",
                 "lr_find_cost_fraction", "houses_cv_rmsle", "gflops", "machine")


class FakeClock:
    """Each call advances by the next of ``steps`` seconds (after the side ran)."""

    def __init__(self):
        self.now, self.pending = 0.0, 0.0

    def __call__(self) -> float:
        self.now += self.pending
        self.pending = 0.0
        return self.now


def test_alternate_reverses_the_order_each_round_and_drops_warmup():
    clock, order = FakeClock(), []

    def side(name: str, seconds: float):
        def run():
            order.append(name)
            clock.pending = seconds
            return {"seconds": seconds * 10}
        return run

    results = {}
    times = timing.alternate({"a": side("a", 1.0), "b": side("b", 2.0)}, repeats=3, warmup=1, clock=clock,
                             results=results)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert times == {"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0]}
    assert len(results["a"]) == 3  # the warm-up round's value is not kept
    own = timing.alternate({"a": side("a", 1.0)}, repeats=2, warmup=0, clock=clock, seconds_of=lambda r: r["seconds"])
    assert own == {"a": [10.0, 10.0]}
    with pytest.raises(ValueError):
        timing.alternate({"a": side("a", 1.0)}, repeats=0)


def test_compare_is_the_ratio_of_the_medians():
    record = timing.compare({"x": [3.0, 1.0, 2.0], "y": [4.0, 8.0, 6.0]}, "x", "y")
    assert record["median_s"] == {"x": 2.0, "y": 6.0}
    assert record["ratio"] == pytest.approx(2.0 / 6.0)
    assert timing.ratio(1.0, 0.0) is None
    assert timing.units_per_sample(0.1, 1.0) == 10 and timing.units_per_sample(5.0, 1.0) == 1
    assert timing.units_per_sample(0.0, 1.0, cap=7) == 7


def test_variant_params_go_through_the_schema(tmp_path):
    adam = {"name": "adam", "weight_decay": 5.0e-4}
    params = timing.variant_params({"lenet.train.optimizer": adam, "lenet.train.epochs": 1}, REPO / "params.yaml")
    assert params.lenet.train.optimizer == Adam(**adam) and params.lenet.train.epochs == 1
    assert params.houses.train == load_params(REPO / "params.yaml").houses.train  # the rest untouched
    with pytest.raises(PipelineError, match="lenet.train.epochs"):
        timing.variant_params({"lenet.train.epochs": 0}, REPO / "params.yaml")
    with pytest.raises(PipelineError, match="lenet.train.optimizer.momentum"):  # sgd's key beside adam
        timing.variant_params({"lenet.train.optimizer.name": "adam"}, REPO / "params.yaml")


def tiny_loader() -> TensorLoader:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=generator), torch.randint(0, 3, (40,), generator=generator)
    return TensorLoader(x, y, batch_size=8, shuffle=True, seed=1, transform=lambda b, g: b + 0.1 * torch.randn(
        b.shape, generator=g))


def test_loop_overhead_sides_compute_the_same_on_the_same_batches():
    torch.set_num_threads(1)
    loader = tiny_loader()

    def make():
        torch.manual_seed(3)
        model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
        return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    workload = overhead.loop_workload("tiny", loader, torch.nn.functional.cross_entropy, make, torch.device("cpu"))
    record = overhead.measure(workload, repeats=2, target_s=0.0)
    assert record["epochs_per_sample"] == 1 and len(record["runs_s"]["pipeline"]) == 2
    assert record["ratio"] == pytest.approx(statistics.median(record["runs_s"]["pipeline"])
                                            / statistics.median(record["runs_s"]["bare"]))
    assert record["pipeline_per_s"] == pytest.approx(40 / record["median_s"]["pipeline"])
    # Same start, same epochs, same batches and augmentation: the same weights, bit for bit.
    ours, bare = workload.sides["pipeline"][0], workload.sides["bare"][0]
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), bare.state_dict().values()))


@pytest.mark.parametrize("r1_interval", [1, 2])
def test_dcgan_pipeline_step_and_bare_step_compute_the_same(r1_interval):
    """Both as train_dcgan trains: the R1 penalty (every step, or lazily) and the EMA."""
    torch.set_num_threads(1)
    params = timing.variant_params({"dcgan.train.batch_size": 4, "dcgan.model.ngf": 4, "dcgan.model.ndf": 4,
                                    "dcgan.model.nz": 8, "dcgan.train.r1_interval": r1_interval},
                                   REPO / "params.yaml")
    assert params.dcgan.train.r1_gamma > 0 and params.dcgan.train.ema_decay > 0
    images = torch.randint(0, 256, (12, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    workload = overhead.gan_workload(params, torch.device("cpu"), images=images, nc=1)
    assert workload.samples_per_epoch == 12
    workload.pipeline_epoch(0)
    workload.bare_epoch(0)
    for ours, bare in zip(workload.sides["pipeline"][:2], workload.sides["bare"][:2]):  # generator, discriminator
        for a, b in zip(ours.state_dict().values(), bare.state_dict().values()):
            assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6)


def test_flop_count_of_a_linear_layer_forward_and_backward():
    """2 B in out a forward; the backward's two matmuls (input and weight gradients) twice that. The
    gradient of a leaf input alone, as R1 takes it, counts under the benchmark's counter too."""
    batch, features_in, features_out = 8, 5, 7
    layer = torch.nn.Linear(features_in, features_out)
    x = torch.randn(batch, features_in, requires_grad=True)
    forward = 2 * batch * features_in * features_out
    assert flops.counted_flops(lambda: layer(x)) == forward
    assert flops.counted_flops(lambda: layer(x).sum().backward()) == 3 * forward
    assert flops.counted_flops(lambda: torch.autograd.grad(layer(x).sum(), x, create_graph=True)) == 2 * forward


def test_flops_measure_steps_counts_the_loop_step(monkeypatch):
    torch.set_num_threads(1)
    loader = tiny_loader()  # 40 rows of 5 features, batches of 8
    hidden, classes = 7, 3

    def make():
        torch.manual_seed(3)
        model = torch.nn.Sequential(torch.nn.Linear(5, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes))
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    workload = overhead.loop_workload("tiny", loader, torch.nn.functional.cross_entropy, make, torch.device("cpu"))
    record = flops.measure_steps(workload, torch.device("cpu"), repeats=2, target_s=0.0)
    first, second = 2 * 8 * 5 * hidden, 2 * 8 * hidden * classes
    # The first layer's input needs no gradient: its forward and weight gradient; the second's three matmuls.
    assert record["flops_per_step"] == 2 * first + 3 * second
    assert record["steps_per_epoch"] == 5 and len(record["runs_s"]) == 2
    for run in record["profiled_runs_s"]:
        assert 0 < run["matmul_conv_s"] <= run["aten_s"] <= run["wall_s"]


def test_dcgan_stage_epoch_adds_the_r1_double_backward():
    """Both parts train the DCGAN as train_dcgan does: with R1 on, more FLOPs than with it off
    (EMA and DiffAugment count none); the loop comparison's epoch is the stage's."""
    torch.set_num_threads(1)
    images = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    counts = {}
    for gamma in (3.0, 0.0):
        params = timing.variant_params({"dcgan.train.batch_size": 4, "dcgan.model.ngf": 4, "dcgan.model.ndf": 4,
                                        "dcgan.model.nz": 8, "dcgan.train.r1_gamma": gamma}, REPO / "params.yaml")
        workload = overhead.gan_workload(params, torch.device("cpu"), images=images, nc=1)
        counts[gamma] = [flops.counted_flops(lambda: epoch(0)) for epoch in (workload.stage_epoch,
                                                                             workload.pipeline_epoch)]
    assert counts[3.0][0] == counts[3.0][1] > counts[0.0][1] == counts[0.0][0] > 0


def fake_flops() -> dict:
    return {"peak_s": {"1": {"512": 0.004, "1024": 0.02}, "2": {"512": 0.003, "1024": 0.03}},
            "models": {"lenet": {"flops_per_step": 2.0e8, "runs_s": [0.03, 0.02, 0.025], "threads": 2,
                                 "profiled_runs_s": [{"wall_s": 0.03, "aten_s": 0.02, "matmul_conv_s": 0.015},
                                                     {"wall_s": 0.04, "aten_s": 0.03, "matmul_conv_s": 0.012},
                                                     {"wall_s": 0.02, "aten_s": 0.01, "matmul_conv_s": 0.01}]},
                       "houses": {"skipped": "no data", "threads": 2}}}


def test_gflops_figures_from_the_recorded_medians():
    record = fake_flops()
    block = summary.build({"flops": record}, {"cores": 2}, quick=True, command="test", run={})["gflops"]
    sweep = {threads: {n: 2 * int(n) ** 3 / s / 1e9 for n, s in by_n.items()} for threads, by_n in
             record["peak_s"].items()}
    for threads, by_n in sweep.items():
        assert block["peak_sweep_gflop_s"][threads] == pytest.approx(by_n)
    lenet, step = record["models"]["lenet"], statistics.median(record["models"]["lenet"]["runs_s"])
    rate, peak, runs = lenet["flops_per_step"] / step / 1e9, max(sweep["2"].values()), lenet["profiled_runs_s"]
    assert list(block["models"]) == ["lenet"]  # a skipped model has no figures
    assert block["models"]["lenet"] == pytest.approx({
        "flops_per_step": lenet["flops_per_step"], "step_s": step, "gflop_s": rate, "peak_gflop_s": peak,
        "fraction_of_peak": rate / peak, "threads": 2,
        # each profiled round's own ratios, then the median
        "outside_compute_share": statistics.median([1 - r["aten_s"] / r["wall_s"] for r in runs]),
        "matmul_conv_share": statistics.median([r["matmul_conv_s"] / r["wall_s"] for r in runs]),
        "matmul_conv_gflop_s": lenet["flops_per_step"] / statistics.median([r["matmul_conv_s"] for r in runs]) / 1e9,
        "profiler_slowdown": statistics.median([r["wall_s"] for r in runs]) / step})
    text = timing.table(summary.rows(summary.build({"flops": record}, {}, quick=True, command="t", run={})))
    assert "8. lenet GFLOP/s / peak" in text and "8. float32 matmul peak, 2 thread(s)" in text


def test_cli_quick_flops_writes_bench_json(tmp_path):
    """The flops part end to end (models without prepared data are recorded as skipped)."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "flops", "--device", "cpu",
                           "--output", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    threads = {str(count) for count in yaml.safe_load((REPO / "params.yaml").read_text())["threads"].values()}
    assert set(report["gflops"]["peak_sweep_gflop_s"]) <= threads
    assert all(list(sweep) == [str(n) for n in flops.QUICK_SIZES]
               for sweep in report["gflops"]["peak_sweep_gflop_s"].values())
    details = report["details"]["flops"]["models"]
    assert set(details) == set(overhead.MODELS)
    for name, figures in report["gflops"]["models"].items():
        record = details[name]
        assert figures["gflop_s"] == pytest.approx(record["flops_per_step"] / statistics.median(record["runs_s"]) / 1e9)
        assert figures["threads"] == record["threads"]
    assert "8. float32 matmul peak" in proc.stdout


def test_incremental_rerun_expected_from_the_graph():
    stages = load_stages(REPO / "dvc.yaml")
    assert pipeline_run.expected_rerun(stages, "houses.train.epochs") == ["train_houses", "evaluate_houses", "report"]
    # The DCGAN's FID has its own LeNet (train_fid_lenet): LeNet's training knobs leave it alone.
    assert "evaluate_dcgan" not in pipeline_run.expected_rerun(stages, "lenet.train.lr")
    assert "evaluate_dcgan" in pipeline_run.expected_rerun(stages, "dcgan.feature_net.train.lr")
    # A key only the training reads leaves its range test alone.
    assert "lr_find_lenet" not in pipeline_run.expected_rerun(stages, "lenet.train.epochs")
    assert "lr_find_lenet" in pipeline_run.expected_rerun(stages, "lenet.train.batch_size")


def test_stage_seconds_and_lr_find_fractions_from_dvc_output():
    lines = [(0.0, "Running stage 'lr_find_lenet':"), (0.1, "> python -m dlpipe lr_find_lenet"),
             (2.0, "Running stage 'train_lenet':"), (10.0, "Updating lock file 'dvc.lock'"),
             (10.5, "Running stage 'report':")]
    seconds = pipeline_run.stage_seconds(lines, end=12.0)
    assert seconds == {"lr_find_lenet": 2.0, "train_lenet": 8.5, "report": 1.5}
    assert pipeline_run.lr_find_fractions(seconds) == {"lenet": pytest.approx(2.0 / 8.5)}


def test_rounds_that_ran_are_those_without_the_marker_or_with_a_stage_run():
    up = "Stage 'report' didn't change, skipping\nData and pipelines are up to date.\n"
    checked_out = "Stage 'report' is cached - skipping run, checking out outputs\n"
    ran = "Running stage 'report':\n> python -m dlpipe report\n"
    marker = pipeline_run.DVC_UP_TO_DATE
    assert pipeline_run.rounds_that_ran([up, checked_out, up, ran], marker) == [1, 3]
    assert pipeline_run.rounds_that_ran([up, up], marker) == []


def test_a_noop_that_ran_a_stage_misses_its_bar():
    results = fake_results()
    results["pipeline"]["noop"]["nothing_ran"] = {"dvc_repro": False, "snakemake": True, "dvc_status": True}
    bars = summary.build(results, {"cores": 2}, quick=True, command="test", run={})["bars"]
    assert bars["noop_dvc_repro_s"]["value"] == 1.1 and bars["noop_dvc_repro_s"]["met"] is False  # 1.1 s < 3 s
    assert bars["noop_snakemake_s"]["met"] is False  # 3.5 s: over the bar anyway


def test_combine_runs_takes_median_wall_and_stage_times_and_largest_memory():
    def run(wall, rss, stages):
        return {"wall_s": wall, "peak_tree_rss_mib": rss, "polled_tree_rss_mib": rss - 10,
                "max_process_rss_mib": rss - 20, "stage_s": stages, "stages_ran": list(stages)}

    runs = [run(300.0, 900.0, {"lr_find_lenet": 2.0, "train_lenet": 8.0}),
            run(320.0, 1000.0, {"lr_find_lenet": 4.0, "train_lenet": 12.0})]
    combined = pipeline_run.combine_runs(runs)
    assert combined["wall_s"] == 310.0
    assert (combined["peak_tree_rss_mib"], combined["max_process_rss_mib"]) == (1000.0, 980.0)
    assert combined["stage_s"] == {"lr_find_lenet": 3.0, "train_lenet": 10.0}
    assert combined["lr_find_fraction"] == {"lenet": pytest.approx(0.3)}
    assert combined["runs"] == runs


def test_copy_worktree_copies_what_git_would_commit(tmp_path):
    repo = pipeline_run.copy_worktree(REPO, tmp_path / "copy", {"houses.train.epochs": 2})
    assert (repo / "dvc.yaml").read_text() == (REPO / "dvc.yaml").read_text()
    assert yaml.safe_load((repo / "params.yaml").read_text())["houses"]["train"]["epochs"] == 2
    for ignored in ("data", "models", "checkpoints", ".venv"):
        assert not (repo / ignored).exists()
    # reports/ holds the text outputs git tracks (metrics, plot data), none of the cached pictures.
    copied = sorted(str(p.relative_to(repo)) for p in (repo / "reports").rglob("*") if p.is_file())
    tracked = subprocess.run(["git", "ls-files", "reports"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    assert copied == sorted(t for t in tracked if (REPO / t).is_file())
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True)
    assert status.stdout == ""  # everything committed: a clean state


def fake_results() -> dict:
    compare = timing.compare
    lenet = speedups({"seed_as_written": [4.0, 4.2], "seed_1_thread": [2.0, 2.2], "pipeline_default": [2.1, 2.1],
                      "pipeline_fast": [0.3, 0.3]}, ["seed_as_written", "seed_1_thread"],
                     ["pipeline_default", "pipeline_fast"])
    houses = speedups({"seed_as_written": [10.0], "seed_1_thread": [9.0], "pipeline_default": [0.5]},
                      ["seed_as_written", "seed_1_thread"], ["pipeline_default"])
    return {
        "pipeline": {"wall_s": 300.0, "peak_tree_rss_mib": 1200.0, "polled_tree_rss_mib": 1100.0,
                     "max_process_rss_mib": 1200.0, "lr_find_fraction": {"lenet": 0.2},
                     "noop": {"median_s": {"dvc_repro": 1.1, "snakemake": 3.5, "dvc_status": 0.9}},
                     "incremental": {"ran": ["train_houses", "evaluate_houses", "report"], "changed": "k=1",
                                     "expected": ["train_houses", "evaluate_houses", "report"]}},
        "overhead": {"lenet": {**compare({"pipeline": [1.05, 1.02], "bare": [1.0, 1.0]}, "pipeline", "bare"),
                               "pipeline_per_s": 9.0, "bare_per_s": 10.0, "batch_size": 64},
                     "dcgan": {"skipped": "no data"}},
        "reference": {"lenet": lenet, "houses": houses},
        "lr_cost": {"lenet": {**compare({"lr_find_lenet": [1.0], "train_lenet": [4.0]}, "lr_find_lenet",
                                        "train_lenet"), "fraction": 0.25}},
    }


def tiny_folds(folder, folds: int = 3, rows: int = 60, features: int = 4) -> None:
    """prepare_houses' fold files, small: log-prices linear in the features plus a little noise."""
    from dlpipe.data.houses_prepared import save_split
    from dlpipe.io import write_json

    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(features, generator=generator)
    for fold in range(folds):
        x = torch.randn(rows + rows // 2, features, generator=generator)
        y = 12.0 + x @ weights * 0.3 + 0.01 * torch.randn(len(x), generator=generator)
        ids = torch.arange(len(x))
        save_split(folder, f"cv_fold{fold}", {"fit_x": x[:rows], "fit_y": y[:rows], "fit_id": ids[:rows],
                                              "val_x": x[rows:], "val_y": y[rows:], "val_id": ids[rows:],
                                              "val_outlier": torch.zeros(len(x) - rows, dtype=torch.bool),
                                              "test_x": x[:5]})
    write_json(folder / "summary.json", {"rows": {"train": rows, "val": len(x) - rows, "test": 5},
                                         "features": features,
                                         "cv": {"folds": folds, "features": [features] * folds}})


def test_houses_cv_scores_the_baselines_on_every_fold(tmp_path):
    """Tiny settings (20 trees): each baseline's figure is the mean of its per-fold RMSLEs over
    the prepared folds; the MLP's comes from cv_houses' record when it has as many folds."""
    tiny_folds(tmp_path)
    record = tmp_path / "houses_cv.json"
    record.write_text(json.dumps({"cv_rmsle": 0.12, "cv_rmsle_sd": 0.03, "cv_fold_rmsle": [0.1, 0.12, 0.14],
                                  "cv_epoch": 7, "cv_folds": 3}))
    result = houses_cv.houses_cv(tmp_path, record, quick=True, log=lambda line: None)
    assert result["folds"] == 3 and result["gbm_settings"]["n_estimators"] == houses_cv.QUICK_TREES
    for name in ("ridge", "gbm"):
        folds = result[name]["cv_fold_rmsle"]
        assert len(folds) == 3 and result[name]["cv_rmsle"] == pytest.approx(statistics.mean(folds))
        assert result[name]["cv_rmsle_sd"] == pytest.approx(statistics.stdev(folds))
    assert result["ridge"]["cv_rmsle"] < 0.05  # a linear target: the ridge fits it to about the noise
    assert result["mlp"]["cv_rmsle"] == 0.12 and result["mlp"]["cv_epoch"] == 7
    report = summary.build({"houses_cv": result}, {"cores": 2}, quick=True, command="test", run={})
    assert report["houses_cv_rmsle"] == {name: result[name]["cv_rmsle"] for name in ("mlp", "ridge", "gbm")}
    assert "7. houses cv_rmsle, RidgeCV" in timing.table(summary.rows(report))
    # A record of other folds is not set beside these.
    record.write_text(json.dumps({"cv_rmsle": 0.12, "cv_rmsle_sd": 0.03, "cv_fold_rmsle": [0.1, 0.14],
                                  "cv_epoch": 7, "cv_folds": 2}))
    assert "mlp" not in houses_cv.houses_cv(tmp_path, record, quick=True, log=lambda line: None)


def test_summary_figures_are_the_recorded_medians_ratios():
    results = fake_results()
    report = summary.build(results, {"cores": 2}, quick=True, command="test", run={})
    for key in REQUIRED_KEYS:
        assert key in report, key
    assert report["pipeline_peak_rss_mib"] == 1200.0 and report["noop_snakemake_s"] == 3.5
    assert report["loop_overhead"] == {"lenet": results["overhead"]["lenet"]["ratio"]}
    assert report["loop_overhead"]["lenet"] == pytest.approx(statistics.median([1.05, 1.02]) / 1.0)
    assert report["lenet_speedup_vs_seed"] == pytest.approx(2.1 / 0.3)  # the better seed setting, best config
    assert report["lenet_speedup_vs_seed_config"] == "pipeline_fast"
    assert report["lenet_speedup_vs_seed_default_params"] == pytest.approx(2.1 / 2.1)
    assert report["houses_speedup_vs_seed"] == pytest.approx(9.0 / 0.5)
    assert report["lr_find_cost_fraction"] == {"lenet": 0.25}
    bars = report["bars"]
    assert bars["noop_snakemake_s"]["met"] is False and bars["noop_dvc_repro_s"]["met"] is True
    assert bars["incremental_stages_rerun"]["met"] is True
    assert bars["lenet_speedup_vs_seed"]["met"] is True and bars["lenet_speedup_vs_seed_default_params"]["met"] is False
    text = timing.table(summary.rows(report))
    assert "loop / bare lenet" in text and "NO" in text
    json.dumps(report)  # plain JSON


def test_summary_of_nothing_run_has_the_keys_as_null():
    report = summary.build({}, {"cores": 2}, quick=True, command="test", run={})
    for key in REQUIRED_KEYS[:-1]:
        assert report[key] is None, key
    assert all(entry["met"] is None for entry in report["bars"].values())
    timing.table(summary.rows(report))


def test_cli_quick_tuning_writes_bench_json(tmp_path):
    """The entry point end to end on one cheap part: the JSON is written and its
    figures are the ratios of the medians it records."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "tuning", "--tuning-options",
                           "threads_1", "--device", "cpu", "--output", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    for key in REQUIRED_KEYS:
        assert key in report, key
    assert report["quick"] is True and report["parts_run"] == ["tuning"]
    assert report["machine"]["cores"] >= 1 and report["machine"]["torch"] == torch.__version__
    for record in report["details"]["tuning"].values():
        entry = record["options"]["threads_1"]
        assert entry["step_ratio"] == pytest.approx(record["step_s"]["threads_1"] / record["step_s"]["baseline"])
    assert "tuning lenet threads_1" in proc.stdout


def test_incremental_bar_allows_skipped_downstream_but_nothing_outside():
    expected = ["train_houses", "evaluate_houses", "report"]
    # DVC skips a downstream stage whose inputs came out byte-identical: still within the bar.
    assert summary.only_downstream(["train_houses", "report"], expected)
    assert summary.only_downstream(expected, expected)
    assert not summary.only_downstream(["report"], expected)  # the changed stage itself must run
    assert not summary.only_downstream(["prepare_houses", *expected], expected)  # an upstream stage reran
    assert not summary.only_downstream([], expected)


def test_seeds_summary_covers_every_headline_and_leaves_failed_runs_out():
    from benchmarks import seeds

    keys = [key for keys in seeds.HEADLINES.values() for key in keys]
    runs = [{"seed": s, "ok": True, "metrics": {key: s * (i + 1) / 10 for i, key in enumerate(keys)}}
            for s in (1, 2, 4)] + [{"seed": 9, "ok": False, "error": "boom"}]
    summary = seeds.summarise(runs)
    assert list(summary) == keys
    for i, key in enumerate(keys):
        values = [1 * (i + 1) / 10, 2 * (i + 1) / 10, 4 * (i + 1) / 10]
        mean = sum(values) / 3
        sd = (sum((v - mean) ** 2 for v in values) / 2) ** 0.5  # sample sd, n - 1
        assert summary[key] == {"n": 3, "mean": pytest.approx(mean), "sd": pytest.approx(sd),
                                "min": values[0], "max": values[2]}
    # Every seed key of the default params is varied, and --threads reaches every stage.
    overrides = seeds.seed_overrides(REPO, 7, threads=1)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert {key: overrides[key] for key in seeds.SEED_KEYS} == dict.fromkeys(seeds.SEED_KEYS, 7)
    assert {key for key in overrides if key.startswith("threads.")} == {f"threads.{n}" for n in raw["threads"]}
    for key in seeds.SEED_KEYS:  # each names a key the default params have, an integer seed
        node = raw
        for part in key.split("."):
            node = node[part]
        assert isinstance(node, int), key


def test_gan_sweep_scores_what_the_stages_score(gan_run, monkeypatch):
    """gan_sweep trains as train_dcgan does and scores as evaluate_dcgan does: its last
    point is the pipeline's fid and ceiling, and scoring on the way leaves training alone."""
    root, params = gan_run
    monkeypatch.chdir(root)
    result = gan_sweep.fid_trace(params, every=1)
    metrics = json.loads((root / "reports/details/dcgan.json").read_text())
    assert [row["epoch"] for row in result["trace"]] == [1, 2]
    assert result["trace"][-1]["fid"] == pytest.approx(metrics["fid"], rel=1e-9)
    assert result["fid_ceiling"] == pytest.approx(metrics["fid_ceiling"], rel=1e-9)
    assert result["fid_samples"] == metrics["fid_samples"]


@pytest.mark.slow
def test_transfer_gain_pairs_the_backbones_at_each_seed(tmp_path):
    """Two seeds on tiny settings: each row is the stages' own evaluation (gains = pretrained minus
    random), the summary is over the rows, and --finetune-only reruns in the same folders."""
    from benchmarks import transfer_gain
    from dlpipe.tiny import OVERRIDES

    tiny = [f"{k}={json.dumps(v)}" for k, v in OVERRIDES.items() if k.startswith("transfer.")]
    common = ["--seeds", "3", "4", "--jobs", "1", "--work", str(tmp_path / "work"), "--set", *tiny]
    result = transfer_gain.main([*common, "--out", str(tmp_path / "gain.json")])
    assert [row["seed"] for row in result["runs"]] == [3, 4]
    for row in result["runs"]:
        params = yaml.safe_load((tmp_path / "work" / f"seed_{row['seed']}" / "params.yaml").read_text())
        assert params["seed"] == params["transfer"]["data"]["split_seed"] == row["seed"]
        assert row["val_images"] == 180
        for stage in ("head", "finetune"):
            assert row[f"{stage}_gain"] == pytest.approx(row[f"{stage}_val_accuracy"]
                                                         - row[f"random_{stage}_val_accuracy"])
    assert result["summary"]["head_gain"]["mean"] == pytest.approx(
        statistics.mean(row["head_gain"] for row in result["runs"]))
    again = transfer_gain.main([*common, "transfer.finetune.train.epochs=2", "--finetune-only",
                                "--out", str(tmp_path / "again.json")])
    assert [(r["head_val_accuracy"], r["random_head_val_accuracy"]) for r in again["runs"]] == [
        (r["head_val_accuracy"], r["random_head_val_accuracy"]) for r in result["runs"]]
