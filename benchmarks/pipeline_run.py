"""Figures 1 to 3: the whole pipeline from a clean state, no-op reruns, one incremental rerun.

Clean state: a copy of the repository's files (tracked, and untracked but not
ignored: what ``git status`` would commit; no data, models, DVC cache or
engine state) in a temporary folder, made a git repository with one commit,
then ``dvc repro`` there, running that copy's own ``src/`` (PYTHONPATH).

Memory, two measurements of the run's process tree (dvc, the stage's python, pip):
``polled_tree_rss_mib``, the largest *sum* of the resident set sizes of every
process alive at once, polled every ``poll_s`` seconds with psutil (what the
machine must hold at once, but a spike shorter than ``poll_s`` is missed); and
``max_process_rss_mib``, the kernel's exact high-water mark of the largest
single process (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` read by a small
wrapper around the run, so no earlier child of the benchmark counts; it leaves
out the processes alive beside it). ``peak_tree_rss_mib``, the figure checked
against the 4 GiB bar, is the larger of the two: neither can exceed the true
peak of the tree, so it is a lower bound that misses at most a short spike of
several processes together.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from benchmarks.summary import only_downstream
from benchmarks.timing import alternate, medians, override_raw

RAN = re.compile(r"^Running stage '([^']+)'", re.M)
DVC_UP_TO_DATE, SNAKEMAKE_NOTHING = "Data and pipelines are up to date", "Nothing to be done"
MIB = 1024 * 1024

# Runs a command and writes its tree's largest single-process RSS (the kernel's count) as JSON.
_RUSAGE_WRAPPER = ("import json, resource, subprocess, sys\n"
                   "rc = subprocess.call(sys.argv[2:])\n"
                   "ru = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
                   "json.dump({'rc': rc, 'maxrss_kib': ru.ru_maxrss}, open(sys.argv[1], 'w'))\n"
                   "sys.exit(rc)\n")


def engine_env(repo: Path) -> dict[str, str]:
    """dvc, snakemake and the stages from this interpreter's environment; the copy's own code."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", OMP_WAIT_POLICY="PASSIVE",
               PYTHONPATH=str(repo / "src"), DVC_NO_ANALYTICS="1",
               GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.invalid",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.invalid")
    return env


def listed_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                         capture_output=True, text=True, check=True).stdout
    return [rel for rel in out.split("\0") if rel]


def copy_worktree(root: Path, dest: Path, overrides: dict | None = None) -> Path:
    """The files git would commit, copied to ``dest`` (links kept as links), params
    ``overrides`` applied, committed as one commit of a new git repository."""
    import yaml

    for rel in listed_files(root):
        src, target = root / rel, dest / rel
        if src.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(src), target)
        elif src.is_file():  # a deleted but still tracked file is skipped
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    if overrides:
        params = dest / "params.yaml"
        params.write_text(yaml.safe_dump(override_raw(yaml.safe_load(params.read_text()), overrides), sort_keys=False))
    env = engine_env(dest)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench: clean state"]):
        subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True)
    return dest


def tree_rss(pid: int) -> int:
    """Sum of the resident set sizes of ``pid`` and all its descendants, in bytes."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def run_measured(cmd: list[str], cwd: Path, env: dict, poll_s: float = 0.2, timeout_s: float = 3600) -> dict:
    """Run ``cmd``; wall seconds, each output line with its arrival time, peak RSS (tree sum, polled)
    and the largest single process's RSS (kernel high-water mark)."""
    rusage_file = cwd / ".bench_rusage.json"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _RUSAGE_WRAPPER, str(rusage_file), *cmd], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append((time.perf_counter() - start, line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        if time.perf_counter() - start > timeout_s:
            proc.kill()
        time.sleep(poll_s)
    wall = time.perf_counter() - start
    reader.join(timeout=10)
    usage = json.loads(rusage_file.read_text()) if rusage_file.is_file() else {"maxrss_kib": 0}
    rusage_file.unlink(missing_ok=True)
    polled, largest = peak / MIB, usage["maxrss_kib"] / 1024
    return {"rc": proc.returncode, "wall_s": wall, "lines": lines, "peak_tree_rss_mib": max(polled, largest),
            "polled_tree_rss_mib": polled, "max_process_rss_mib": largest,
            "output": "\n".join(text for _, text in lines)}


def stage_seconds(lines: list[tuple[float, str]], end: float) -> dict[str, float]:
    """{stage: seconds} from the arrival times of dvc's "Running stage" lines: a stage lasts
    until the next one starts (its lock-file update included), the last one until ``end``."""
    starts = [(t, m.group(1)) for t, text in lines if (m := RAN.match(text))]
    bounds = [t for t, _ in starts[1:]] + [end]
    return {name: round(stop - t, 3) for (t, name), stop in zip(starts, bounds)}


def lr_find_fractions(seconds: dict[str, float]) -> dict[str, float]:
    """{model: lr_find_<model> / train_<model>} for every model with both stages."""
    return {name[len("lr_find_"):]: seconds[name] / seconds["train_" + name[len("lr_find_"):]]
            for name in seconds if name.startswith("lr_find_") and seconds.get("train_" + name[len("lr_find_"):])}


# --------------------------------------------------------------------------- the graph


def downstream(stages, names: set[str]) -> set[str]:
    """``names`` and every stage that (transitively) depends on one of their outputs."""
    from dlpipe.workflow_graph import produced_by

    made = produced_by(stages)
    result, grew = set(names), True
    while grew:
        grew = False
        for stage in stages:
            if stage.name not in result and any(made.get(dep) in result for dep in stage.deps):
                result.add(stage.name)
                grew = True
    return result


def reading(stages, key: str) -> set[str]:
    """Stages that read params ``key``: a listed key equal to it or above it, or params.yaml as a file dep."""
    return {stage.name for stage in stages
            if "params.yaml" in stage.deps or any(key == k or key.startswith(k + ".") for k in stage.params)}


def expected_rerun(stages, key: str) -> list[str]:
    """The stages a change of ``key`` must rerun, in graph (file) order."""
    wanted = downstream(stages, reading(stages, key))
    return [stage.name for stage in stages if stage.name in wanted]


# --------------------------------------------------------------------------- the figures


def sh(cmd: list[str], repo: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    return out


def rounds_that_ran(outputs: list[str], marker: str) -> list[int]:
    """Indices of the outputs that are not a no-op: without the engine's up-to-date ``marker``,
    or naming a stage DVC ran."""
    return [index for index, out in enumerate(outputs) if marker not in out or RAN.search(out)]


def noop_reruns(repo: Path, env: dict, repeats: int) -> dict:
    """``dvc repro``, ``snakemake --cores 2`` and ``dvc status`` on an up-to-date copy, alternating.

    The copy is first made up to date for Snakemake as ``make snakemake-touch`` does it
    (``snakemake --touch --forceall``): ``dvc repro`` skips a stage whose outputs are all
    tracked in git (cache: false) and come out as dvc.lock records them (evaluate_houses,
    evaluate_dcgan), leaving those outputs older than their new inputs, which Snakemake
    would rerun, and the report after them. ``rounds_that_ran`` names every timed round
    that was not a no-op (warm-up rounds are not timed and not checked)."""
    sh(["snakemake", "--cores", "1", "--touch", "--forceall"], repo, env)
    outputs: dict[str, list] = {}
    sides = {"dvc_repro": lambda: sh(["dvc", "repro"], repo, env),
             "snakemake": lambda: sh(["snakemake", "--cores", "2"], repo, env),
             "dvc_status": lambda: sh(["dvc", "status"], repo, env)}
    times = alternate(sides, repeats, warmup=1, results=outputs)
    marker = {"dvc_repro": DVC_UP_TO_DATE, "snakemake": SNAKEMAKE_NOTHING, "dvc_status": DVC_UP_TO_DATE}
    ran = {name: rounds_that_ran(outs, marker[name]) for name, outs in outputs.items()}
    return {"runs_s": times, "median_s": medians(times), "nothing_ran": {name: not r for name, r in ran.items()},
            "rounds_that_ran": ran,
            "outputs_that_ran": {name: [outputs[name][i][-1500:] for i in r] for name, r in ran.items()},
            "last_output": {name: outs[-1][-600:] for name, outs in outputs.items()}}


def incremental(repo: Path, env: dict, key: str) -> dict:
    """Cut the integer params ``key`` (an epoch count) to a tenth, ``dvc repro``; which stages
    ran against the graph. A tenth, not one more: with early stopping one more epoch changes
    nothing, and DVC then rightly skips the stages downstream of the unchanged weights."""
    import yaml

    from dlpipe.workflow_graph import load_stages

    params = repo / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    node = raw
    for part in key.split(".")[:-1]:
        node = node[part]
    value = max(1, node[key.rsplit(".", 1)[-1]] // 10)
    params.write_text(yaml.safe_dump(override_raw(raw, {key: value}), sort_keys=False))
    start = time.perf_counter()
    out = sh(["dvc", "repro"], repo, env)
    seconds = time.perf_counter() - start
    ran, expected = RAN.findall(out), expected_rerun(load_stages(repo / "dvc.yaml"), key)
    return {"changed": f"{key}={value}", "ran": ran, "expected": expected, "seconds": seconds,
            "only_downstream": only_downstream(ran, expected)}



def repro_once(root: Path, repo: Path, overrides: dict | None, log: Callable[[str], None]) -> dict:
    """One ``dvc repro`` of a fresh copy of ``root`` at ``repo``: its wall, memory and stage times."""
    copy_worktree(root, repo, overrides)
    log(f"  clean copy in {repo}: dvc repro (the whole pipeline) ...")
    run = run_measured(["dvc", "repro"], repo, engine_env(repo))
    if run["rc"] != 0:
        raise RuntimeError(f"dvc repro in the clean copy failed ({run['rc']}):\n{run['output'][-4000:]}")
    seconds = stage_seconds(run["lines"], run["wall_s"])
    log(f"  pipeline: {run['wall_s']:.1f} s wall; peak RSS {run['peak_tree_rss_mib']:.0f} MiB (tree polled: "
        f"{run['polled_tree_rss_mib']:.0f} MiB, largest process: {run['max_process_rss_mib']:.0f} MiB); "
        f"{len(seconds)} stages")
    keys = ("wall_s", "peak_tree_rss_mib", "polled_tree_rss_mib", "max_process_rss_mib")
    return {**{key: run[key] for key in keys}, "stage_s": seconds, "stages_ran": RAN.findall(run["output"])}


def clean_run(root: Path, workdir: Path, overrides: dict | None, noop_repeats: int, incremental_key: str,
              runs: int = 2, log: Callable[[str], None] = print) -> dict:
    """``runs`` clean-state ``dvc repro``s, each of its own fresh copy, one after the other: the
    median wall and stage times, the largest memory; then the no-op and incremental reruns in
    the last copy (the earlier copies are removed once measured: each holds the DVC cache)."""
    if runs < 1:
        raise ValueError(f"runs: expected at least 1 clean-state run, got {runs}")
    each = []
    for index in range(runs):
        repo = workdir / f"repo-{index + 1}"
        each.append(repro_once(root, repo, overrides, log))
        if index < runs - 1:
            shutil.rmtree(repo)
    env = engine_env(repo)
    noop = noop_reruns(repo, env, noop_repeats)
    log("  no-op reruns (median s): " + ", ".join(f"{k} {v:.2f}" for k, v in noop["median_s"].items())
        + f"; nothing ran: {noop['nothing_ran']}")
    inc = incremental(repo, env, incremental_key)
    log(f"  incremental ({inc['changed']}): ran {inc['ran']}, expected {inc['expected']}")
    return {**combine_runs(each), "noop": noop, "incremental": inc, "overrides": overrides or {}}


def combine_runs(each: list[dict]) -> dict:
    """Several clean-state runs as one record: the median wall and stage times (a stage's
    median over the runs that timed it), the largest memory readings, every run kept."""
    stage_s = medians({name: [run["stage_s"][name] for run in each if name in run["stage_s"]]
                       for name in each[-1]["stage_s"]})
    return {"wall_s": statistics.median(run["wall_s"] for run in each),
            **{key: max(run[key] for run in each)
               for key in ("peak_tree_rss_mib", "polled_tree_rss_mib", "max_process_rss_mib")},
            "stage_s": stage_s, "stages_ran": each[-1]["stages_ran"], "lr_find_fraction": lr_find_fractions(stage_s),
            "runs": each}
