"""GPU mapping on one machine (dlpipe.gpu_slots) and the profiles' per-stage GPU needs.

There is no GPU here: the device list is fake (``CUDA_VISIBLE_DEVICES=7,9``
given to Snakemake, as a user would to share devices 7 and 9), and each job
records the ``CUDA_VISIBLE_DEVICES`` it sees. The concurrency test runs the
real Snakefile and rule adapter under ``snakemake --cores 4 --resources gpu=2``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import pytest
import yaml

from conftest import REPO, engine_env, run
from dlpipe import gpu_slots
from dlpipe.workflow_graph import load_stages

FAKE_POOL = "7,9"


def gpu_env(lock_dir: Path, visible: str | None = FAKE_POOL) -> dict[str, str]:
    env = engine_env(PYTHONPATH=str(REPO / "src"), DLPIPE_GPU_LOCKS=str(lock_dir))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    return env


# --------------------------------------------------------------------------- the module


def test_pool_is_the_visible_devices_or_nvidia_smi(tmp_path):
    assert gpu_slots.device_pool({"CUDA_VISIBLE_DEVICES": " 3, 5,"}) == ["3", "5"]
    assert gpu_slots.device_pool({"CUDA_VISIBLE_DEVICES": ""}) == []  # the user hid every GPU
    if shutil.which("nvidia-smi") is None:
        assert gpu_slots.device_pool({"PATH": os.environ.get("PATH", "")}) == []


def test_claims_are_exclusive_until_released(tmp_path):
    pool = ["7", "9"]
    first, fds_first = gpu_slots.claim(1, pool, tmp_path)
    second, fds_second = gpu_slots.claim(1, pool, tmp_path)
    assert first == ["7"] and second == ["9"]
    with pytest.raises(gpu_slots.NoFreeDevice, match=r"--resources gpu=2"):
        gpu_slots.claim(1, pool, tmp_path)
    gpu_slots.release(fds_first)
    again, fds_again = gpu_slots.claim(1, pool, tmp_path)
    assert again == ["7"]
    gpu_slots.release(fds_again + fds_second)
    both, fds_both = gpu_slots.claim(2, pool, tmp_path)
    assert both == ["7", "9"]
    gpu_slots.release(fds_both)


def test_job_environment_maps_only_under_local_snakemake(tmp_path):
    # A job needing none sees no GPU; one needing one sees one of the pool.
    env, fds = gpu_slots.job_environment(0, {"DLPIPE_GPU_LOCKS": str(tmp_path), "CUDA_VISIBLE_DEVICES": FAKE_POOL})
    assert env["CUDA_VISIBLE_DEVICES"] == "" and fds == []
    env, fds = gpu_slots.job_environment(1, {"DLPIPE_GPU_LOCKS": str(tmp_path), "CUDA_VISIBLE_DEVICES": FAKE_POOL})
    assert env["CUDA_VISIBLE_DEVICES"] == "7" and len(fds) == 1
    gpu_slots.release(fds)
    # No lock folder (a SLURM job, dvc repro, a stage by hand): what the scheduler set stays.
    env, fds = gpu_slots.job_environment(1, {"CUDA_VISIBLE_DEVICES": "1"})
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and fds == []
    # No GPU at all: nothing to map, the job runs on the CPU.
    env, fds = gpu_slots.job_environment(1, {"DLPIPE_GPU_LOCKS": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""})
    assert env["CUDA_VISIBLE_DEVICES"] == "" and fds == []


def test_the_command_holds_its_device_until_it_dies(tmp_path):
    env = gpu_env(tmp_path / "locks")
    job = subprocess.Popen([sys.executable, "-m", "dlpipe.gpu_slots", "1", 'echo "$CUDA_VISIBLE_DEVICES"; exec sleep 60'],
                           env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert job.stdout.readline().strip() == "7"
        # Held while the command runs, by the command itself (the wrapper exec'd into it).
        with pytest.raises(gpu_slots.NoFreeDevice):
            gpu_slots.claim(2, ["7", "9"], tmp_path / "locks")
    finally:
        job.send_signal(signal.SIGKILL)  # no clean-up code runs: the kernel drops the lock
        job.wait(timeout=10)
    devices, fds = gpu_slots.claim(2, ["7", "9"], tmp_path / "locks")
    assert devices == ["7", "9"]
    gpu_slots.release(fds)


def test_command_status_and_missing_slot_error(tmp_path):
    env = gpu_env(tmp_path / "locks", visible="4")
    ok = subprocess.run([sys.executable, "-m", "dlpipe.gpu_slots", "1", "test \"$CUDA_VISIBLE_DEVICES\" = 4 && exit 3"],
                        env=env, capture_output=True, text=True)
    assert ok.returncode == 3  # the command's own exit status comes back
    too_many = subprocess.run([sys.executable, "-m", "dlpipe.gpu_slots", "2", "true"], env=env,
                              capture_output=True, text=True)
    assert too_many.returncode != 0
    assert "needs 2 GPU(s), but only 1 of the 1 device(s) [4] are free" in too_many.stderr
    assert "--resources gpu=1" in too_many.stderr


# --------------------------------------------------------------------------- Snakemake + the real adapter

RECORDER = """\
import json, os, sys, time
start = time.time()
time.sleep(float(sys.argv[2]))
os.makedirs("out", exist_ok=True)
with open(f"out/{sys.argv[1]}.json", "w") as handle:
    json.dump({"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time()}, handle)
"""
GPU_JOBS = ("gpu_a", "gpu_b", "gpu_c", "gpu_d", "gpu_e")


def small_workflow(dest: Path, declared_gpu: int = 0) -> Path:
    """The repository's Snakefile, adapter, schema and params with a dvc.yaml of
    independent sleeping stages that record the devices they see; the GPU stages
    declare ``declared_gpu`` (meta.resources, as dlpipe.declare writes it)."""
    for rel in ("Snakefile", "params.yaml", "workflow/rules/dvc_stages.smk", "workflow/schemas/params.schema.yaml"):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, dest / rel)
    (dest / "record.py").write_text(RECORDER)
    stages = {name: {"cmd": f"python record.py {name} 2", "deps": ["record.py"], "outs": [f"out/{name}.json"]}
              for name in GPU_JOBS + ("cpu_only",)}
    for name in GPU_JOBS:
        stages[name]["meta"] = {"resources": {"gpu": declared_gpu}}
    (dest / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    # Every stage declares its threads (the adapter refuses entries for stages it does not have).
    raw = yaml.safe_load((dest / "params.yaml").read_text())
    raw["threads"] = dict.fromkeys(stages, 1)
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return dest


def test_snakemake_gives_every_running_gpu_job_its_own_device(tmp_path):
    repo = small_workflow(tmp_path / "wf")
    env = gpu_env(tmp_path / "unused")  # the Snakefile sets the lock folder itself
    env.pop("DLPIPE_GPU_LOCKS")
    need = [f"{name}:gpu=1" for name in GPU_JOBS]
    run(["snakemake", "--cores", "4", "--resources", "gpu=2", "--set-resources", *need, "--workflow-profile", "none"],
        repo, env)

    seen = {name: json.loads((repo / "out" / f"{name}.json").read_text()) for name in GPU_JOBS + ("cpu_only",)}
    assert seen["cpu_only"]["visible"] == ""  # asked for no GPU, sees none
    gpu = {name: seen[name] for name in GPU_JOBS}
    assert all(record["visible"] in ("7", "9") for record in gpu.values()), gpu
    assert {record["visible"] for record in gpu.values()} == {"7", "9"}
    overlapping = [(a, b) for a, b in combinations(GPU_JOBS, 2)
                   if gpu[a]["start"] < gpu[b]["end"] and gpu[b]["start"] < gpu[a]["end"]]
    assert overlapping, f"no two GPU jobs ran at once: the test proves nothing\n{gpu}"
    for a, b in overlapping:
        assert gpu[a]["visible"] != gpu[b]["visible"], (a, b, gpu)
    # --resources gpu=2: never three at once.
    for trio in combinations(GPU_JOBS, 3):
        assert not (max(gpu[n]["start"] for n in trio) < min(gpu[n]["end"] for n in trio)), (trio, gpu)


def test_gpu_need_counts_only_where_a_gpu_can_be_held():
    assert gpu_slots.scheduled_need(1, local_exec=True, pool=["7"]) == 1
    assert gpu_slots.scheduled_need(1, local_exec=True, pool=[]) == 0  # runs on the CPU here
    assert gpu_slots.scheduled_need(1, local_exec=False, pool=[]) == 1  # a cluster grants it
    assert gpu_slots.scheduled_need(0, local_exec=False, pool=["7"]) == 0


@pytest.mark.parametrize("visible", ["", "7"])
def test_gpu_cap_serializes_device_stages_only_where_there_is_a_gpu(tmp_path, visible):
    # The local profile's cap of one GPU job, with the GPU need declared in dvc.yaml (no
    # --set-resources): with no device the five stages run on the CPU and share the 2
    # cores; with one device they take turns on it.
    repo = small_workflow(tmp_path / "wf", declared_gpu=1)
    env = gpu_env(tmp_path / "unused", visible=visible)
    env.pop("DLPIPE_GPU_LOCKS")
    run(["snakemake", "--cores", "2", "--resources", "gpu=1", "--workflow-profile", "none"], repo, env)
    seen = {name: json.loads((repo / "out" / f"{name}.json").read_text()) for name in GPU_JOBS}
    overlapping = [(a, b) for a, b in combinations(GPU_JOBS, 2)
                   if seen[a]["start"] < seen[b]["end"] and seen[b]["start"] < seen[a]["end"]]
    if visible:
        assert not overlapping, seen
        assert {record["visible"] for record in seen.values()} == {"7"}
    else:
        assert overlapping, f"no two CPU-only device stages ran at once under gpu=1\n{seen}"


# --------------------------------------------------------------------------- the profiles


def profile(name: str) -> dict:
    return yaml.safe_load((REPO / "workflow" / "profiles" / name / "config.yaml").read_text())


def test_every_device_stage_claims_one_gpu():
    # A stage that reads `device` may use a GPU: it must claim one, or two stages could
    # end up on one device (locally) or get none (on SLURM). The declarations derive it.
    for stage in load_stages(REPO / "dvc.yaml"):
        assert stage.resources["gpu"] == (1 if "device" in stage.params else 0), stage.name
        assert stage.resources["mem_mb"] >= 1000 and stage.resources["runtime"] >= 1, stage.name


@pytest.mark.parametrize("name", ["local", "slurm"])
def test_profiles_hold_machine_settings_only(name):
    # Per-stage threads (params.yaml) and resources (the declarations) come with the rules.
    config = profile(name)
    assert "set-threads" not in config and "set-resources" not in config
    if name == "local":
        assert config["resources"]["gpu"] >= 1  # how many GPU jobs at once; --resources gpu=K raises it
    else:
        assert config["executor"] == "slurm"
        assert "slurm_partition" in config["default-resources"]
        assert "resources" not in config  # the cluster, not this process, limits GPU jobs
