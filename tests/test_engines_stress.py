"""The engines under stress: parallel jobs, queued experiments, a shared remote.

1. ``snakemake --cores 2`` really runs independent stages at the same time
   (Snakemake's own event order and the stage processes' lifetimes both show
   it); every atomic write of every job goes through a temporary name of its
   own beside its target (a Python audit hook in each stage process records
   the writes); and the outputs are the bytes of a serial ``dvc repro``.
2. ``dvc exp run --queue`` twice, ``dvc exp run --run-all``: both variants run
   (only the stages their param reaches) and ``dvc exp show --json`` lists them
   with the metrics their runs wrote; and while a long queued experiment runs,
   ``dvc exp show --json`` already lists its training stage's DVCLive step and
   metric.
3. After a fresh clone and ``dvc pull`` (contents without modification times,
   no Snakemake records), ``make snakemake-touch`` hands DVC's outputs to
   Snakemake: nothing reruns, and a changed param still reruns its stage and
   what follows.
4. ``dvc push`` to a folder remote, a fresh ``git clone`` and ``dvc pull``
   give the run's data, weights and metrics bit for bit, with ``dvc status``
   clean and ``dvc repro`` running nothing.

All start from conftest's tiny commit (tiny_source) or its first ``dvc repro``
(tiny_dvc_run), each in its own copy. Runtimes are printed (``pytest -s``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import textwrap
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import yaml

from conftest import BIN, clone_run, output_roots, write_params
from dlpipe.io import HOST, atomic_path
from dlpipe.workflow_graph import is_directory, load_stages, produced_by

OUTPUT_ROOTS = output_roots(checkpoints=False)  # what DVC and git track (checkpoints/ is neither)
ENGINE_MARKERS = {".snakemake_timestamp", ".gitignore"}
METRICS = "reports/metrics/houses.json"
VAL_RMSLE_SERIES = "dvclive/train_houses/plots/metrics/val_rmsle.tsv"  # DVCLive: one row per epoch

_DVC_RAN = re.compile(r"^Running stage '([^']+)'", re.M)
_DVC_SKIPPED = re.compile(r"^Stage '([^']+)' didn't change, skipping", re.M)
_SMK_STARTED = re.compile(r"^(?:local)?rule (\w+):", re.M)
_SMK_EVENT = re.compile(r"^(?:(?:local)?rule (\w+):|Finished jobid: \d+ \(Rule: (\w+)\))", re.M)


# --------------------------------------------------------------------------- helpers


def sh(cmd: list[str], repo: Path, env: dict, timeout: int = 900, check: bool = True) -> tuple[str, float]:
    """Run ``cmd`` in ``repo``; return stdout+stderr and the elapsed seconds; fail loudly."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - start
    out = proc.stdout + proc.stderr
    if check:
        assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{out[-6000:]}"
    return out, elapsed


def report_time(what: str, seconds: float) -> None:
    print(f"\n[stress timing] {what}: {seconds:.1f} s")


def json_in(out: str):
    """The JSON value a ``--json`` command printed (stderr, merged in, may hold progress lines)."""
    starts = [i for i in (out.find("{"), out.find("[")) if i >= 0]
    start = min(starts)
    end = max(out.rfind("}"), out.rfind("]")) + 1
    return json.loads(out[start:end])


def git_clone(source: Path, dest: Path, env: dict) -> tuple[Path, dict]:
    sh(["git", "clone", "-q", str(source), str(dest)], source, env)
    return dest, dict(env, PYTHONPATH=str(dest / "src"))


def commit_all(repo: Path, env: dict, message: str) -> None:
    sh(["git", "add", "-A"], repo, env)  # dvc.lock and params; outputs stay with DVC (git-ignored)
    sh(["git", "commit", "-qm", message], repo, env)


def stage_names(repo: Path) -> list[str]:
    return [stage.name for stage in load_stages(repo / "dvc.yaml")]


def output_files(repo: Path, roots=OUTPUT_ROOTS) -> dict[str, str]:
    """{relative path: sha256} of every pipeline output file (engine markers left out)."""
    files = {}
    for root in roots:
        for path in sorted((repo / root).rglob("*")):
            if path.is_file() and path.name not in ENGINE_MARKERS:
                files[path.relative_to(repo).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def mtimes(repo: Path, rels) -> dict[str, int]:
    return {rel: (repo / rel).stat().st_mtime_ns for rel in rels}


def files_of_outs(repo: Path, outs) -> list[str]:
    """The files the outs name (a folder: every file under it), engine markers left out."""
    files = []
    for out in outs:
        path = repo / out
        if is_directory(out):
            files += [p.relative_to(repo).as_posix() for p in sorted(path.rglob("*"))
                      if p.is_file() and p.name not in ENGINE_MARKERS]
        else:
            files.append(out)
    return files


def get_param(repo: Path, dotted: str):
    node = yaml.safe_load((repo / "params.yaml").read_text())
    for part in dotted.split("."):
        node = node[part]
    return node


def set_params(repo: Path, values: dict) -> None:
    path = repo / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    for dotted, value in values.items():
        *parents, last = dotted.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[last] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def series_rows(text: str) -> list[dict[str, str]]:
    """The rows of a DVCLive series (a TSV: step and value)."""
    return list(csv.DictReader(text.splitlines(), delimiter="\t"))


def snakemake_jobs(out: str) -> list[str]:
    return [name for name in _SMK_STARTED.findall(out) if name != "all"]


def planned_jobs(out: str) -> set[str]:
    """The jobs a ``snakemake -n`` plans (its job table), ``all`` left out."""
    if "Nothing to be done" in out:
        return set()
    table = out[out.index("Job stats:"):]
    table = table[:table.index("total")]
    return {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+\s*$", table, re.M)} - {"all"}


def makefile_touch(repo: Path, env: dict, check: bool = True) -> str:
    """``make snakemake-touch`` in a copy, with this session's venv (its ``setup`` left alone)."""
    venv = BIN.parent
    out, seconds = sh(["make", f"VENV={venv}", "-o", str(venv / ".installed"), "snakemake-touch"], repo, env,
                      check=check)
    report_time("make snakemake-touch", seconds)
    return out


# --------------------------------------------------------------------------- 1. snakemake --cores 2

# Loaded by every Python process whose PYTHONPATH holds its folder (site imports
# sitecustomize at start-up): records the process's lifetime and, through an
# audit hook, every file it opens for writing and every rename, with the argv.
TRACE_SITE = textwrap.dedent('''
    import atexit, json, os, sys, time
    _DIR = os.environ.get("STRESS_TRACE_DIR")
    if _DIR:
        _START = time.time()
        _BUSY = [False]
        _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT

        def _emit(record):
            record.update(pid=os.getpid(), argv=sys.argv[1:], cwd=os.getcwd())
            fd = os.open(os.path.join(_DIR, f"{os.getpid()}.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, (json.dumps(record) + "\\n").encode())
            finally:
                os.close(fd)

        def _hook(event, args):
            if _BUSY[0] or event not in ("open", "os.rename"):
                return
            _BUSY[0] = True
            try:
                if event == "open":
                    path, mode, flags = args
                    writes = (mode and any(c in mode for c in "wax+")) or (mode is None and flags & _WRITE)
                    if isinstance(path, int) or not writes:
                        return
                    record = {"event": "write", "paths": [os.path.abspath(os.fsdecode(path))],
                              "excl": bool(mode is None and flags & os.O_EXCL)}
                else:
                    src, dst, src_dir_fd, dst_dir_fd = args
                    if {src_dir_fd, dst_dir_fd} - {None, -1}:  # relative to a folder's fd: not ours
                        return
                    record = {"event": "rename", "paths": [os.path.abspath(os.fsdecode(p)) for p in (src, dst)]}
                record["t"] = time.time()
                _emit(record)
            except Exception:
                pass
            finally:
                _BUSY[0] = False

        sys.addaudithook(_hook)
        atexit.register(lambda: _emit({"event": "life", "start": _START, "end": time.time()}))
''')


def read_trace(folder: Path, stages: set[str]) -> dict[int, dict]:
    """{pid: {"stage", "start", "end", "writes", "renames"}} for the stage processes
    (``python -m dlpipe <stage>``; Snakemake itself and pip are left out)."""
    procs: dict[int, dict] = {}
    for file in folder.glob("*.jsonl"):
        for line in file.read_text().splitlines():
            rec = json.loads(line)
            if len(rec["argv"]) != 1 or rec["argv"][0] not in stages:
                continue
            proc = procs.setdefault(rec["pid"], {"stage": rec["argv"][0], "writes": [], "renames": []})
            if rec["event"] == "life":
                proc.update(start=rec["start"], end=rec["end"])
            elif rec["event"] == "write":
                proc["writes"].append(rec["paths"][0])
            else:
                proc["renames"].append(tuple(rec["paths"]))
    return procs


def overlapping_pairs(intervals: dict[str, tuple[float, float]]) -> set[frozenset]:
    names = sorted(intervals)
    return {frozenset((a, b)) for i, a in enumerate(names) for b in names[i + 1:]
            if intervals[a][0] < intervals[b][1] and intervals[b][0] < intervals[a][1]}


def snakemake_concurrency(out: str) -> tuple[int, set[frozenset]]:
    """From Snakemake's own output (a job's block when it starts, ``Finished jobid`` when it
    ends, in event order): the most jobs running at once, and the pairs that ran together."""
    running: set[str] = set()
    most, pairs = 0, set()
    for started, finished in _SMK_EVENT.findall(out):
        if started and started != "all":
            pairs |= {frozenset((started, other)) for other in running}
            running.add(started)
            most = max(most, len(running))
        elif finished:
            running.discard(finished)
    return most, pairs


def upstream_stages(stages, targets) -> set[str]:
    """The stages a build of `targets` runs on a clean checkout: their producers, transitively."""
    producer = produced_by(stages)
    by_name = {s.name: s for s in stages}
    todo, found = [producer[t] for t in targets], set()
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo += [producer[d] for d in by_name[name].deps if d in producer]
    return found


def test_atomic_writes_to_one_target_get_their_own_temporary_names(tmp_path):
    """Even two writers of one target at once never share a temporary file."""
    target = tmp_path / "out" / "m.json"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second and first.parent == second.parent == target.parent
        for tmp in (first, second):
            # .<name>.<host>-<pid>.<random>.tmp: its owner in its name, as a temporary folder's
            owner = f"{re.escape(HOST)}-{os.getpid()}"
            assert re.fullmatch(rf"\.m\.json\.{owner}\.[A-Za-z0-9_]{{8}}\.tmp", tmp.name), tmp.name
        first.write_text("first")
        second.write_text("second")
    assert target.read_text() == "first"  # the outer block finishes last: its rename wins, whole
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.json"]


def test_snakemake_cores_2_overlaps_jobs_with_private_temp_files_and_serial_outputs(tiny_source, tiny_dvc_run,
                                                                                      tmp_path):
    repo, env = git_clone(tiny_source[0], tmp_path / "repo", tiny_source[1])
    site, trace = tmp_path / "site", tmp_path / "trace"
    site.mkdir(), trace.mkdir()
    (site / "sitecustomize.py").write_text(TRACE_SITE)
    env = dict(env, PYTHONPATH=f"{site}{os.pathsep}{repo / 'src'}", STRESS_TRACE_DIR=str(trace))

    # Two independent chains: the houses pipeline and the classifier's data. The
    # local profile (profiles/default) is in effect, as for a user's plain call.
    targets = [METRICS, "data/prepared/classifier"]
    out, seconds = sh(["snakemake", "--cores", "2", *targets], repo, env)
    report_time("snakemake --cores 2 (houses + classifier data, traced)", seconds)
    ran = snakemake_jobs(out)
    expected = upstream_stages(load_stages(repo / "dvc.yaml"), targets)
    assert {"train_houses", "prepare_classifier"} <= expected, expected
    assert sorted(ran) == sorted(expected), out[-3000:]

    # Overlap, seen by Snakemake: two jobs were running at once, a houses and a classifier one.
    most, smk_pairs = snakemake_concurrency(out)
    assert most == 2, out[-3000:]
    assert any(any("houses" in s for s in pair) and any("classifier" in s for s in pair)
               for pair in smk_pairs), smk_pairs

    # ... and seen by the stage processes themselves (their start and exit times).
    procs = read_trace(trace, expected)
    assert sorted(p["stage"] for p in procs.values()) == sorted(expected), procs  # one process per stage
    lifetimes = {p["stage"]: (p["start"], p["end"]) for p in procs.values()}
    own_pairs = overlapping_pairs(lifetimes)
    assert own_pairs, lifetimes
    assert own_pairs <= smk_pairs, (own_pairs, smk_pairs)  # Snakemake's view holds each job longer
    print("\n[stress] ran together:", sorted(tuple(sorted(p)) for p in own_pairs))

    # Every atomic write: a temporary name of its own (random part), beside its target,
    # used by that one job only; no repository file written by two jobs.
    root = str(repo) + os.sep
    owners: dict[str, set[str]] = defaultdict(set)
    temp_names = []
    for proc in procs.values():
        assert proc["renames"], f"{proc['stage']}: no atomic rename seen"
        for src, dst in proc["renames"]:
            assert src.startswith(root) and dst.startswith(root), (src, dst)
            assert Path(src).parent == Path(dst).parent, (src, dst)  # same folder: rename is atomic
            # .<name>.<host>-<pid>.<random>.tmp (a file's or a folder's: its owner in its name)
            assert re.fullmatch(rf"\.{re.escape(Path(dst).name)}\.[A-Za-z0-9-]+-\d+\.[A-Za-z0-9_]{{8}}\.tmp",
                                Path(src).name), (src, dst)
            temp_names.append(src)
            owners[src].add(proc["stage"])
            owners[dst].add(proc["stage"])
        for path in proc["writes"]:
            if path.startswith(root):
                owners[path].add(proc["stage"])
    assert len(temp_names) == len(set(temp_names)), Counter(temp_names).most_common(3)
    shared = {path: stages for path, stages in owners.items() if len(stages) > 1}
    assert not shared, shared
    leftovers = [p for p in repo.rglob(".*") if p.name.endswith((".tmp", ".old")) and ".snakemake" not in p.parts]
    assert not leftovers, leftovers

    # The same bytes as the serial run (dvc repro, one stage at a time, same commit).
    stages = {s.name: s for s in load_stages(repo / "dvc.yaml")}
    for name in expected:
        files = files_of_outs(tiny_dvc_run.repo, stages[name].outs)
        assert files and files == files_of_outs(repo, stages[name].outs), name
        for rel in files:
            assert (repo / rel).read_bytes() == (tiny_dvc_run.repo / rel).read_bytes(), rel
        assert (repo / "logs" / f"{name}.log").stat().st_size > 0, name


# --------------------------------------------------------------------------- 2. dvc exp queue


def locked_file(repo: Path, rev: str, stage: str, rel: str, env: dict) -> bytes:
    """A small text output an experiment's commit holds (git-tracked: cache: false), checked
    against the md5 its dvc.lock recorded."""
    lock = yaml.safe_load(sh(["git", "show", f"{rev}:dvc.lock"], repo, env)[0])["stages"][stage]
    (entry,) = [e for e in lock["outs"] if e["path"] == rel]
    data = sh(["git", "show", f"{rev}:{rel}"], repo, env)[0].encode()
    assert hashlib.md5(data).hexdigest() == entry["md5"], rel
    return data


def stop_queue(repo: Path, env: dict) -> None:
    """Stop the queue's worker (it stays idle after --run-all) and wait until it is gone."""
    sh(["dvc", "queue", "stop"], repo, env, timeout=60, check=False)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out, _ = sh(["dvc", "queue", "status"], repo, env, timeout=60, check=False)
        if "Worker status: 0 active, 0 idle" in out:
            return
        time.sleep(1)
    sh(["dvc", "queue", "stop", "--kill"], repo, env, timeout=60, check=False)


@pytest.mark.slow  # two queued experiments, each a tiny run: about 100 s (make test-slow)
def test_dvc_queue_runs_two_variants_and_exp_show_lists_their_metrics(tiny_dvc_run, tmp_path):
    repo, env = clone_run(tiny_dvc_run, tmp_path / "repo")
    commit_all(repo, env, "tiny run")
    assert get_param(repo, "houses.train.schedule.name") == "constant"  # the history prefix check below relies on it
    base_epochs = get_param(repo, "houses.train.epochs")
    variants = {"ep_short": base_epochs - 1, "ep_long": base_epochs + 1}
    before = output_files(repo)

    for name, epochs in variants.items():
        out, _ = sh(["dvc", "exp", "run", "--queue", "-S", f"houses.train.epochs={epochs}", "-n", name], repo, env)
        assert f"Queued experiment '{name}'" in out, out
    status, _ = sh(["dvc", "queue", "status"], repo, env)
    assert all(re.search(rf"\b{name}\s+.*\bQueued\b", status) for name in variants), status

    try:
        out, seconds = sh(["dvc", "exp", "run", "--run-all"], repo, env, timeout=600)
    finally:
        stop_queue(repo, env)
    report_time("dvc exp run --run-all (2 queued variants)", seconds)
    # Each variant reran only what houses.train.epochs reaches; the rest came from the cache.
    assert Counter(_DVC_RAN.findall(out)) == {"train_houses": 2, "evaluate_houses": 2, "report": 2}, out[-4000:]
    assert Counter(_DVC_SKIPPED.findall(out))["lr_find_houses"] == 2
    status, _ = sh(["dvc", "queue", "status"], repo, env)
    assert all(re.search(rf"\b{name}\s+.*\bSuccess\b", status) for name in variants), status
    assert output_files(repo) == before  # the queue never touched the workspace

    shown = json_in(sh(["dvc", "exp", "show", "--json"], repo, env)[0])
    workspace, baseline = shown[0], shown[1]
    assert workspace["rev"] == "workspace"
    base_metrics = json.loads((repo / METRICS).read_text())
    for row in (workspace, baseline):
        assert row["data"]["metrics"][METRICS]["data"] == base_metrics
    exps = {rev["name"]: rev for group in baseline["experiments"] for rev in group["revs"]}
    assert set(exps) == set(variants), exps.keys()

    base_history = series_rows((repo / VAL_RMSLE_SERIES).read_text())
    values = {}
    for name, epochs in variants.items():
        data = exps[name]["data"]
        assert data["params"]["params.yaml"]["data"]["houses"]["train"]["epochs"] == epochs
        listed = data["metrics"][METRICS]["data"]
        # The listed metrics are the file the experiment's commit holds (git-tracked, md5 as in its dvc.lock).
        written = json.loads(locked_file(repo, exps[name]["rev"], "evaluate_houses", METRICS, env))
        assert listed == written, name
        history = series_rows(sh(["git", "show", f"{exps[name]['rev']}:{VAL_RMSLE_SERIES}"], repo, env)[0])
        assert len(history) == epochs
        # Seeded and deterministic: the first epochs are the baseline run's, row for row.
        shared = min(epochs, base_epochs)
        assert history[:shared] == base_history[:shared], name
        assert listed["val_rmsle"] == pytest.approx(min(float(r["val_rmsle"]) for r in history), rel=1e-4)
        values[name] = listed["val_rmsle"]
    assert len({values["ep_short"], values["ep_long"], base_metrics["val_rmsle"]}) == 3
    print("\n[stress] val_rmsle:", values, "baseline", base_metrics["val_rmsle"])


LIVE_SUMMARY = "dvclive/train_houses/metrics.json"


def running_summary(shown: list, name: str) -> dict | None:
    """The DVCLive summary `dvc exp show --json` lists for experiment ``name`` while it runs."""
    for baseline in shown[1:]:
        for group in baseline.get("experiments") or []:  # a group's executor: its run's state
            running = (group.get("executor") or {}).get("state") == "running"
            for rev in group.get("revs", []):
                data = rev.get("data") or {}
                summary = ((data.get("metrics") or {}).get(LIVE_SUMMARY) or {}).get("data")
                if rev.get("name") == name and running and summary:
                    return summary
    return None


@pytest.mark.slow  # a long queued experiment watched while it runs, then killed (make test-slow)
def test_exp_show_lists_a_queued_experiments_training_step_and_metric_while_it_runs(tiny_dvc_run, tmp_path):
    repo, env = clone_run(tiny_dvc_run, tmp_path / "repo")
    commit_all(repo, env, "tiny run")
    epochs = 100_000  # the schema's most: far longer than the test waits, which kills it when seen
    sh(["dvc", "exp", "run", "--queue", "-S", f"houses.train.epochs={epochs}", "-n", "long"], repo, env)
    seen = None
    try:
        # The worker it starts keeps the standard streams: captured, the call would wait for the run's end.
        subprocess.run(["dvc", "queue", "start"], cwd=repo, env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, check=True)
        deadline = time.monotonic() + 240
        while seen is None and time.monotonic() < deadline:
            # While the run starts, `dvc exp show` can fail on a half-written run file: asked again.
            out, _ = sh(["dvc", "exp", "show", "--json"], repo, env, check=False)
            try:
                shown = json_in(out)
            except ValueError:  # no JSON in its output: an error line
                shown = None
            seen = running_summary(shown, "long") if isinstance(shown, list) else None
            time.sleep(0.5)
        status, _ = sh(["dvc", "queue", "status"], repo, env)
    finally:
        sh(["dvc", "queue", "kill", "long"], repo, env, check=False)
        stop_queue(repo, env)
    assert seen is not None, "dvc exp show never listed the running experiment's DVCLive summary"
    print("\n[stress] live summary while running:", seen)
    assert 1 <= seen["step"] < epochs and seen["val_rmsle"] > 0  # the step and the monitored metric
    assert re.search(r"\blong\s+.*\bRunning\b", status), status


# --------------------------------------------------------------------------- 3 and 4. push, clone, pull


@pytest.fixture(scope="module")
def pushed(tiny_dvc_run, tmp_path_factory) -> tuple[Path, dict, Path]:
    """A committed copy of the tiny run that pushed its DVC cache to a folder remote, the
    remote named in the untracked .dvc/config.local only. Returns (repo, env, remote)."""
    base = tmp_path_factory.mktemp("pushed")
    repo, env = clone_run(tiny_dvc_run, base / "repo")
    commit_all(repo, env, "tiny run")
    remote = base / "remote"
    sh(["dvc", "remote", "add", "--local", "-d", "store", str(remote)], repo, env)
    out, seconds = sh(["dvc", "push"], repo, env)
    report_time("dvc push (tiny run, folder remote)", seconds)
    assert re.search(r"\d+ files? pushed", out), out
    return repo, env, remote


def clone_and_pull(pushed, dest: Path) -> tuple[Path, dict, str]:
    source, env, remote = pushed
    repo, env = git_clone(source, dest, env)
    sh(["dvc", "remote", "add", "--local", "-d", "store", str(remote)], repo, env)
    out, seconds = sh(["dvc", "pull"], repo, env)
    report_time("git clone + dvc pull", seconds)
    return repo, env, out


def test_push_then_fresh_clone_and_pull_reproduces_without_retraining(pushed, tiny_dvc_run, tmp_path):
    source, env, remote = pushed
    # The remote lives in config.local only: nothing committed names this machine's folders.
    assert ".dvc/config.local" not in sh(["git", "ls-files", ".dvc"], source, env)[0].split()
    assert str(remote) not in (source / ".dvc" / "config").read_text()
    assert sh(["git", "status", "--porcelain"], source, env)[0] == ""

    repo, env, pull_out = clone_and_pull(pushed, tmp_path / "clone")
    assert re.search(r"\d+ files? (fetched|added)", pull_out), pull_out

    status = json_in(sh(["dvc", "status", "--json"], repo, env)[0])
    assert status == {}, status
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], repo, env)[0]
    assert json_in(sh(["dvc", "status", "--cloud", "--json"], repo, env)[0]) == {}

    before = output_files(repo)
    before_times = mtimes(repo, before)
    out, seconds = sh(["dvc", "repro"], repo, env)
    report_time("dvc repro after the pull (no-op)", seconds)
    assert _DVC_RAN.findall(out) == [], out[-3000:]
    assert sorted(_DVC_SKIPPED.findall(out)) == sorted(stage_names(repo))
    assert output_files(repo) == before and mtimes(repo, before) == before_times  # nothing rewritten

    # Data, weights, plots and metrics: the original run's files, byte for byte, and all of them.
    original = output_files(tiny_dvc_run.repo)
    assert before == original, set(before) ^ set(original)
    assert any(rel.startswith("models/") for rel in before) and "data/raw/houses/train.csv" in before
    assert (repo / "dvc.lock").read_bytes() == (tiny_dvc_run.repo / "dvc.lock").read_bytes()
    shown = json_in(sh(["dvc", "metrics", "show", "--json"], repo, env)[0])
    metrics = next(iter(shown.values()))["data"] if "data" in next(iter(shown.values())) else shown
    for rel in (METRICS, "reports/metrics/lenet.json"):
        assert metrics[rel]["data"] == json.loads((tiny_dvc_run.repo / rel).read_text()), rel
    # The resumable checkpoints are neither cached nor pushed: the clone has none, and needs none.
    assert (tiny_dvc_run.repo / "checkpoints/houses/last.pt").is_file()
    assert not (repo / "checkpoints").exists()


@pytest.mark.slow  # a push, a fresh clone, a pull and three Snakemake runs: about 60 s (make test-slow)
def test_snakemake_after_pull_reruns_nothing_until_a_param_changes(pushed, tmp_path):
    repo, env, _ = clone_and_pull(pushed, tmp_path / "clone")
    assert not (repo / ".snakemake").exists()  # a fresh clone: no Snakemake records
    # A later `dvc checkout` rewrites files with new times; do it to the raw data
    # on purpose, so that the plain plan below does not depend on the pull's order.
    now = time.time() + 5
    raw = repo / "data/raw/houses"
    for path in [*raw.iterdir(), raw]:  # the folder too: Snakemake reads a folder input's own time
        os.utime(path, (now, now))

    plan, _ = sh(["snakemake", "-n", "--cores", "2"], repo, env)
    stale = planned_jobs(plan)
    assert {"prepare_houses", "train_houses", "evaluate_houses"} <= stale, plan[-3000:]  # the problem

    # The target refuses a workspace that is not what dvc.lock records.
    params = (repo / "params.yaml").read_bytes()
    set_params(repo, {"houses.train.epochs": get_param(repo, "houses.train.epochs") + 1})
    refused = makefile_touch(repo, env, check=False)
    assert "dvc status is not clean" in refused, refused
    assert not any((repo / ".snakemake" / "metadata").glob("*"))  # no records written
    (repo / "params.yaml").write_bytes(params)

    outputs = output_files(repo)
    touch_out = makefile_touch(repo, env)
    assert len(snakemake_jobs(touch_out)) == len(stage_names(repo)), touch_out[-3000:]  # --forceall: every job
    assert output_files(repo) == outputs  # touched, not rewritten
    assert json_in(sh(["dvc", "status", "--json"], repo, env)[0]) == {}

    plan, _ = sh(["snakemake", "-n", "--cores", "2"], repo, env)
    assert "Nothing to be done" in plan, plan[-3000:]
    times = mtimes(repo, outputs)
    out, _ = sh(["snakemake", "--cores", "2"], repo, env)
    assert snakemake_jobs(out) == [] and "Nothing to be done" in out, out[-3000:]
    assert output_files(repo) == outputs and mtimes(repo, outputs) == times

    # A stage that was not stale before the touch has records too (--forceall):
    # its param reaches it and everything after it, as under dvc repro.
    val_fraction = get_param(repo, "houses.prepare.val_fraction")
    set_params(repo, {"houses.prepare.val_fraction": round(val_fraction + 0.05, 4)})
    plan, _ = sh(["snakemake", "-n", "--cores", "2"], repo, env)
    assert planned_jobs(plan) == {"prepare_houses", "lr_find_houses", "train_houses", "evaluate_houses",
                                  "report"}, plan[-3000:]

    # Run one: more epochs reruns training and what follows, nothing else.
    epochs = get_param(repo, "houses.train.epochs") + 1
    set_params(repo, {"houses.prepare.val_fraction": val_fraction, "houses.train.epochs": epochs})
    old_metrics = json.loads((repo / METRICS).read_text())
    out, seconds = sh(["snakemake", "--cores", "2"], repo, env)
    report_time("snakemake --cores 2 after houses.train.epochs + 1", seconds)
    assert sorted(snakemake_jobs(out)) == ["evaluate_houses", "report", "train_houses"], out[-3000:]
    after = output_files(repo)
    assert set(after) == set(outputs)
    rerun_outs = {o for s in load_stages(repo / "dvc.yaml")
                  if s.name in ("train_houses", "evaluate_houses", "report") for o in s.outs}
    for rel in outputs:
        if rel.startswith(("data/", "reports/lr_find/")):
            assert after[rel] == outputs[rel], rel
    assert after["models/houses.pt"] != outputs["models/houses.pt"]
    assert len(series_rows((repo / VAL_RMSLE_SERIES).read_text())) == epochs
    assert json.loads((repo / METRICS).read_text())["val_rmsle"] != old_metrics["val_rmsle"]
    changed = {rel for rel in outputs if after[rel] != outputs[rel]}
    assert all(any(rel == o or rel.startswith(o + "/") for o in rerun_outs) for rel in changed), changed

    # Back to DVC: it sees exactly those stages changed; dvc commit records Snakemake's run.
    status = json_in(sh(["dvc", "status", "--json"], repo, env)[0])
    assert set(status) == {"train_houses", "evaluate_houses", "report"}, status
    sh(["dvc", "commit", "-f"], repo, env)
    assert json_in(sh(["dvc", "status", "--json"], repo, env)[0]) == {}
    out, _ = sh(["dvc", "repro"], repo, env)
    assert _DVC_RAN.findall(out) == [], out[-3000:]


@pytest.mark.slow  # both engines over a tiny run: about 56 s (make test-slow)
def test_a_source_dated_in_the_future_loses_no_output_under_either_engine(tiny_source, tiny_dvc_run, tmp_path):
    """Clock skew: a file dated a day ahead (copied from a machine whose clock runs fast).
    Snakemake refuses, and deletes, outputs older than a job's newest input; its inputs
    are brought back to now before any job runs (workflow_graph.clamp_future_mtimes)."""
    future = time.time() + 86400
    code = "src/dlpipe/stages/train_houses.py"
    repo, env = git_clone(tiny_source[0], tmp_path / "snake", tiny_source[1])
    sh(["snakemake", "--cores", "2", METRICS], repo, env)
    os.utime(repo / code, (future, future))
    write_params(repo / "params.yaml", {"houses.train.epochs": 3})  # a param change reruns train_houses
    out, _ = sh(["snakemake", "--cores", "2", METRICS], repo, env)
    assert "clock skew" in out and "set to now" in out, out[-3000:]
    assert "older modification time" not in out, out[-3000:]
    assert (repo / "models/houses.pt").is_file() and (repo / METRICS).is_file()
    assert (repo / code).stat().st_mtime < future - 3600
    out, _ = sh(["snakemake", "--cores", "2", METRICS], repo, env)
    assert "Nothing to be done" in out, out[-3000:]  # no rerun loop either

    # DVC decides by content: a future date changes nothing, and nothing is rerun.
    dvc_repo, dvc_env = clone_run(tiny_dvc_run, tmp_path / "dvc")
    os.utime(dvc_repo / code, (future, future))
    before = output_files(dvc_repo)
    out, _ = sh(["dvc", "repro", "--dry"], dvc_repo, dvc_env)
    assert "Running stage" not in out, out[-3000:]
    assert output_files(dvc_repo) == before


@pytest.mark.slow
def test_after_a_killed_snakemake_run_unlock_is_all_a_rerun_needs(tiny_source, tmp_path):
    """What README's troubleshooting says: a Snakemake killed mid-job leaves its lock (the
    next call names --unlock); after `snakemake --unlock`, a plain call reruns the cut-off
    job (the profile's rerun-incomplete) and finishes every output."""
    repo, env = git_clone(tiny_source[0], tmp_path / "repo", tiny_source[1])
    proc = subprocess.Popen(["snakemake", "--cores", "2", METRICS], cwd=repo, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = repo / "logs/train_houses.log"  # Snakemake opens a job's log as the job starts
    deadline = time.monotonic() + 600
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists() and proc.poll() is None, "train_houses never started"
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its running job, as a lost session would
    proc.wait()

    out, _ = sh(["snakemake", "--cores", "2", METRICS], repo, env, check=False)
    assert "--unlock" in out, out[-3000:]
    sh(["snakemake", "--unlock"], repo, env)
    out, _ = sh(["snakemake", "--cores", "2", METRICS], repo, env)
    assert "train_houses" in snakemake_jobs(out), out[-3000:]
    assert (repo / "models/houses.pt").is_file() and (repo / METRICS).is_file()
