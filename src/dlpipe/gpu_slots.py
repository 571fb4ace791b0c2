"""One GPU per running job when Snakemake runs the stages on this machine.

Snakemake decides *how many* GPU jobs run at once: each stage's ``gpu``
resource comes from the profile (``set-resources``) and ``--resources gpu=K``
caps their sum. This module only decides *which* device a started job gets.
Every Snakemake rule runs its command through it::

    python -m dlpipe.gpu_slots <gpus the job needs> '<command>'

It claims that many free devices out of the pool with one lock file each
(``fcntl.flock``, non-blocking: the kernel makes the claim atomic between jobs
that start together), exports ``CUDA_VISIBLE_DEVICES`` naming them, and
``exec``s the command with the lock files still open. The locks are released
when the command ends, however it ends (a crash or ``kill -9`` included), so a
slot can never stay taken by a job that is gone, as a leftover lock file would.

- The pool: the ``CUDA_VISIBLE_DEVICES`` Snakemake was started with, if set
  (``CUDA_VISIBLE_DEVICES=2,3 snakemake ...`` shares devices 2 and 3), else
  every GPU ``nvidia-smi`` lists (by UUID, which CUDA accepts and which does
  not depend on CUDA's device order). No GPU: the command runs unchanged.
- A job that needs no GPU sees none (``CUDA_VISIBLE_DEVICES=""``), so a
  stage never shares a device it did not ask for.
- Mapping is on only when the Snakefile sets ``DLPIPE_GPU_LOCKS`` (the lock
  folder), which it does for Snakemake's local executor. On a cluster the
  scheduler gives each job its own devices (SLURM sets
  ``CUDA_VISIBLE_DEVICES``), and under ``dvc repro`` or by hand one stage runs
  at a time: there the command runs unchanged.
- No GPU on this machine (run locally): the rules count no GPU need
  (``scheduled_need``), so a ``gpu`` cap does not serialize stages that all
  run on the CPU.
- More GPU jobs than devices (``--resources gpu=K`` with K above the pool
  size) is an error naming the fix, not a silent share.
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

LOCKS_ENV = "DLPIPE_GPU_LOCKS"
SHELL = "/bin/sh"


class NoFreeDevice(RuntimeError):
    pass


def device_pool(env: dict[str, str] | None = None) -> list[str]:
    """The devices jobs share: CUDA_VISIBLE_DEVICES if set, else nvidia-smi's GPUs, else none."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [device.strip() for device in visible.split(",") if device.strip()]
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if listed.returncode != 0:
        return []
    return [line.strip() for line in listed.stdout.splitlines() if line.strip()]


def scheduled_need(declared: int, local_exec: bool, pool: Sequence[str]) -> int:
    """The GPUs a job counts against Snakemake's ``gpu`` resource: its declared need, except
    when it runs on this machine and this machine has no GPU. There a device stage runs on
    the CPU like any other, and counting it would only let a ``gpu`` cap (the local
    profile's 1) serialize training stages that could share the cores. On a cluster the
    need always counts: the scheduler grants the devices, whatever the submitting node has."""
    return declared if declared > 0 and (not local_exec or pool) else 0


@functools.cache
def _pool_here() -> tuple[str, ...]:
    return tuple(device_pool())  # once per process: nvidia-smi is not asked for every rule


def rule_gpu_need(declared: int, workflow) -> Callable[[object], int]:
    """A rule's ``gpu`` resource: a function Snakemake calls when it schedules the job, by
    which time the executor is attached (``workflow.local_exec``; while the Snakefile is
    read it is always true)."""
    return lambda wildcards: scheduled_need(declared, workflow.local_exec, _pool_here())


def _lock_path(lock_dir: Path, device: str) -> Path:
    return lock_dir / (re.sub(r"[^A-Za-z0-9._-]", "_", device) + ".lock")


def claim(need: int, pool: list[str], lock_dir: Path) -> tuple[list[str], list[int]]:
    """Lock ``need`` free devices of ``pool``: (their names, the open lock descriptors).

    Closing the descriptors (or the death of every process holding them)
    releases the devices.
    """
    lock_dir.mkdir(parents=True, exist_ok=True)
    devices, fds = [], []
    for device in pool:
        if len(devices) == need:
            break
        fd = os.open(_lock_path(lock_dir, device), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        devices.append(device)
        fds.append(fd)
    if len(devices) < need:
        release(fds)
        raise NoFreeDevice(
            f"gpu_slots: this job needs {need} GPU(s), but only {len(devices)} of the {len(pool)} device(s) "
            f"[{','.join(pool)}] are free: other jobs of this run hold the rest. Let Snakemake run at most "
            f"that many GPU jobs at once: --resources gpu={len(pool)}"
        )
    return devices, fds


def release(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def job_environment(need: int, env: dict[str, str] | None = None) -> tuple[dict[str, str], list[int]]:
    """The environment a job with ``need`` GPUs runs in, and the locks it must keep open."""
    env = dict(os.environ if env is None else env)
    lock_dir = env.get(LOCKS_ENV)
    if not lock_dir:
        return env, []  # not a local Snakemake job: nothing to map
    pool = device_pool(env)
    if not pool:
        return env, []  # no GPU here: the job runs on the CPU as it is
    if need <= 0:
        env["CUDA_VISIBLE_DEVICES"] = ""
        return env, []
    devices, fds = claim(need, pool, Path(lock_dir))
    env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    return env, fds


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[0].isdigit():
        sys.exit("usage: python -m dlpipe.gpu_slots <number of GPUs> '<shell command>'")
    try:
        env, fds = job_environment(int(args[0]))
    except NoFreeDevice as error:
        sys.exit(str(error))
    for fd in fds:
        os.set_inheritable(fd, True)  # held by the command: released when it exits
    os.execve(SHELL, [SHELL, "-c", args[1]], env)


if __name__ == "__main__":
    main()
