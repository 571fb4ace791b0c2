"""The tiny pipeline on a real (one-node) SLURM cluster, through Snakemake's executor plugin.

tests/slurm_cluster.py brings up munged, MariaDB, slurmdbd, slurmctld and
slurmd from Debian's packages; the test then runs

    snakemake --executor slurm --workflow-profile workflow/profiles/slurm

in a tiny copy of the repository, exactly as the README tells users, with two
test-only settings: a 5 s first status check instead of 40 s, and the
cluster's partition (named ``main``, as the profile's default). ``sacct``
must show one job per stage with the CPUs, memory, time limit and GPU the
profile asks for; the outputs must equal, bit for bit, those of a local
``snakemake --cores 2`` run of the same commit (on the CPU every stage is
deterministic; the thread counts differ between the two profiles and do not
change the bits).

The target is the houses and LeNet chains (``evaluate_houses`` and
``evaluate_lenet`` and every stage upstream: 10 stages in 5 levels), not the
whole graph. Each level costs about 30 s on the cluster whatever the stage
does (sbatch, a Snakemake start-up inside the job, the plugin's status polling,
which backs off by 10 s per empty check); the transfer chain alone is 8
levels deep, so the whole graph would take several times as long and test
nothing new: these 10 stages already ask for every kind of request the
profile makes (1, 2 and 4 CPUs; 2, 4 and 8 GB; 15, 30 and 120 minutes; a GPU
or none). tests/test_gpu_slots.py checks the profile entries of every stage.

Skipped, with the reason, where no cluster can be started (not root, packages
missing, a real SLURM configuration present). ``.ci/run`` installs the
packages, so CI runs it. About 3 minutes, mostly SLURM job start-up and
status polling: every stage is its own job.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import output_roots, same_tree  # noqa: E402
import torch
import yaml

import slurm_cluster
from dlpipe.workflow_graph import load_stages, produced_by

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
WHY_NOT = slurm_cluster.why_not()
OUTPUT_ROOTS = output_roots()
ENGINE_MARKERS = {".snakemake_timestamp", ".gitignore"}
TARGETS = ["evaluate_houses", "evaluate_lenet"]
SLURM_RUN = ["snakemake", "--executor", "slurm", "--workflow-profile", "workflow/profiles/slurm",
             # test-only: poll soon (the default waits 40 s before the first check). The plugin
             # adds 10 s after each check that finds no job finished: checks at 5, 20, 45 s
             # after a submission catch the ~15 s jobs here sooner than 2, 14, 36 s would.
             "--slurm-init-seconds-before-status-checks", "5", *TARGETS]


def sh(cmd: list[str], cwd: Path, env: dict, timeout: int = 900) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-6000:]}"
    return out


def git_clone(source: Path, dest: Path, env: dict) -> tuple[Path, dict]:
    sh(["git", "clone", "-q", str(source), str(dest)], source, env)
    return dest, dict(env, PYTHONPATH=str(dest / "src"))


def output_files(repo: Path) -> list[str]:
    return sorted(path.relative_to(repo).as_posix() for root in OUTPUT_ROOTS for path in (repo / root).rglob("*")
                  if path.is_file() and path.name not in ENGINE_MARKERS)



def target_stages(repo: Path) -> list[str]:
    """TARGETS and every stage upstream of them, in dvc.yaml order."""
    stages = {stage.name: stage for stage in load_stages(repo / "dvc.yaml")}
    made = produced_by(list(stages.values()))
    wanted, todo = set(), list(TARGETS)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(made[dep] for dep in stages[name].deps if dep in made)
    return [name for name in stages if name in wanted]


def seconds(limit: str) -> int:
    """sacct's Timelimit ``[D-]HH:MM:SS`` in seconds."""
    days, _, clock = limit.rpartition("-")
    h, m, s = (int(part) for part in clock.split(":"))
    return int(days or 0) * 86400 + h * 3600 + m * 60 + s


def megabytes(req_mem: str) -> int:
    """sacct's ReqMem (``8000M``, ``8G``; older SLURM appends n or c) in MB."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT])[nc]?", req_mem)
    assert match, req_mem
    return round(float(match.group(1)) * {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2}[match.group(2)])


def requested(profile: dict, stage: str) -> dict:
    """What a SLURM job of ``stage`` asks for: cpus, mem_mb, runtime (minutes), gpu: the rule's
    threads (params.yaml) and resources (dvc.yaml's meta.resources, from the stage's declaration)."""
    assert "set-threads" not in profile and "set-resources" not in profile
    cpus = yaml.safe_load((REPO / "params.yaml").read_text())["threads"][stage]
    resources = next(s.resources for s in load_stages(REPO / "dvc.yaml") if s.name == stage)
    return {"cpus": cpus, "mem_mb": resources["mem_mb"], "runtime": resources["runtime"], "gpu": resources["gpu"]}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if WHY_NOT:
        pytest.skip(f"cannot start a test SLURM cluster here: {WHY_NOT}")
    cluster = slurm_cluster.SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def runs(cluster, tiny_repo_factory, tmp_path_factory):
    """One tiny commit run twice: on the cluster, and locally (alongside: the cluster run mostly waits)."""
    source, env = tiny_repo_factory("slurm_source")
    local, local_env = git_clone(source, tmp_path_factory.mktemp("slurm_local") / "repo", env)
    remote, remote_env = git_clone(source, tmp_path_factory.mktemp("slurm_remote") / "repo", env)
    local_proc = subprocess.Popen(["snakemake", "--cores", "2", *TARGETS], cwd=local, env=local_env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 60))
    start = time.perf_counter()
    try:
        out = sh(SLURM_RUN, remote, remote_env)
    except BaseException:
        local_proc.kill()
        local_proc.wait()
        print(cluster.log_tails())
        raise
    elapsed = time.perf_counter() - start
    print(f"\n[slurm timing] snakemake --executor slurm, {' '.join(TARGETS)} (tiny params): {elapsed:.1f} s")
    local_out = local_proc.communicate(timeout=900)[0]
    assert local_proc.returncode == 0, local_out[-6000:]
    return {"local": local, "remote": remote, "out": out, "since": since}


def sacct_jobs(run_id: str, since: str) -> list[dict[str, str]]:
    fields = ["JobID", "JobName", "Comment", "AllocCPUS", "ReqMem", "AllocTRES", "Timelimit", "State", "ExitCode"]
    out = subprocess.run(["sacct", "-X", "-n", "-P", f"--name={run_id}", f"--starttime={since}",
                          f"--format={','.join(fields)}"], capture_output=True, text=True, check=True).stdout
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]


def test_every_stage_ran_as_its_own_slurm_job_with_the_profiles_resources(runs):
    repo, out = runs["remote"], runs["out"]
    stages = target_stages(repo)
    assert set(TARGETS) < set(stages), stages
    profile = yaml.safe_load((repo / "workflow/profiles/slurm/config.yaml").read_text())

    run_id = re.search(r"SLURM run ID: (\S+)", out).group(1)
    submitted = dict((rule, jobid) for jobid, rule in
                     re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", out))
    # sacct answers from slurmdbd, which slurmctld updates a moment after a job ends.
    deadline = time.monotonic() + 30
    while True:
        jobs = sacct_jobs(run_id, runs["since"])
        if len(jobs) >= len(stages) and all(job["State"] == "COMPLETED" for job in jobs) or time.monotonic() > deadline:
            break
        time.sleep(1)

    by_rule: dict[str, list[dict]] = {}
    for job in jobs:
        rule = re.fullmatch(r"rule_(\w+?)(?:_wildcards_.*)?", job["Comment"]).group(1)
        by_rule.setdefault(rule, []).append(job)
    # One job per stage; rule `all` (a localrule) is no job.
    assert sorted(by_rule) == sorted(stages), (sorted(by_rule), jobs)
    assert all(len(found) == 1 for found in by_rule.values()), by_rule
    for stage in stages:
        job = by_rule[stage][0]
        want = requested(profile, stage)
        assert job["State"] == "COMPLETED" and job["ExitCode"] == "0:0", job
        assert job["JobID"] == submitted[stage], (stage, job, submitted)
        assert int(job["AllocCPUS"]) == want["cpus"], (stage, job, want)
        assert megabytes(job["ReqMem"]) == want["mem_mb"], (stage, job, want)
        assert seconds(job["Timelimit"]) == want["runtime"] * 60, (stage, job, want)
        gpus = re.search(r"gres/gpu=(\d+)", job["AllocTRES"])
        assert (int(gpus.group(1)) if gpus else 0) == want["gpu"], (stage, job, want)
    # The GPU stages got SLURM's GPUs; the local slot mapping stayed off.
    assert any(requested(profile, stage)["gpu"] for stage in stages)
    assert not (repo / ".snakemake/gpu_slots").exists()


def test_cluster_run_makes_the_same_outputs_as_a_local_run(runs):
    local, remote = runs["local"], runs["remote"]
    files = output_files(local)
    assert files == output_files(remote)
    assert any(path.startswith("models/") for path in files)
    differ = []
    for rel in files:
        if rel.endswith(".pt"):
            same = same_tree(torch.load(local / rel, map_location="cpu", weights_only=True),
                             torch.load(remote / rel, map_location="cpu", weights_only=True))
        else:
            same = (local / rel).read_bytes() == (remote / rel).read_bytes()
        if not same:
            differ.append(rel)
    assert differ == [], differ
    for stage in target_stages(remote):
        assert (remote / "logs" / f"{stage}.log").is_file(), stage
