"""Atomic file writes and checksums.

Every output goes to a temporary file in the destination folder, is flushed to
disk, then renamed over the target: a killed stage never leaves a half file
that looks finished, and a failed stage leaves the previous output in place.

Temporary folders (``atomic_dir``'s staging, ``scratch_dir``'s downloads) carry their
owner in their name, host and pid: a run that was killed (SIGKILL, a lost node) leaves
one behind, and the next run removes those whose process is gone, never one that a
live process (another stage, another engine) is still filling.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path
from typing import IO, Iterator

from dlpipe.errors import PipelineError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        # mkstemp makes it 0600; the finished file gets the mode a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_umask())
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(target: str | Path, mode: str = "w") -> Iterator[IO]:
    with atomic_path(target) as tmp, open(tmp, mode) as fh:
        yield fh


def write_json(target: str | Path, obj: object) -> None:
    with atomic_open(target) as fh:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")


def read_json(path: str | Path, producer: str) -> dict:
    """A JSON object written by stage ``producer``; a missing or damaged file names that stage."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run {producer} first")
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PipelineError(f"{path}: not JSON ({type(exc).__name__}); rerun {producer}") from None
    if not isinstance(record, dict):
        raise PipelineError(f"{path}: expected a JSON object; rerun {producer}")
    return record


def write_metrics(metrics: Path, details: Path, numbers: dict, headline: tuple[str, ...]) -> None:
    """A stage's results: every number (and note) in ``details``, and the ``headline`` keys
    alone in ``metrics``, its DVC metrics file. One table of `dvc metrics show` lists every
    metrics file's keys side by side: headline keys only keep it as wide as a terminal."""
    write_json(details, numbers)
    write_json(metrics, {key: numbers[key] for key in headline if key in numbers})


def write_text(target: str | Path, text: str) -> None:
    with atomic_open(target) as fh:
        fh.write(text)


# This host, as a temporary name can hold it: on a shared disk (a cluster) a pid means
# something on its own host only.
HOST = re.sub(r"[^A-Za-z0-9]+", "-", socket.gethostname()).strip("-") or "host"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def sweep_stale(folder: Path, prefix: str) -> list[Path]:
    """Remove ``folder/<prefix><host>-<pid>.*.tmp`` left by a process of this host that is
    gone; keep those of live processes and of other hosts. Returns what was removed."""
    owned = re.compile(rf"{re.escape(prefix)}(?P<host>[A-Za-z0-9-]+)-(?P<pid>[0-9]+)\.[^/]*\.tmp")
    removed = []
    for path in sorted(folder.glob(f"{glob.escape(prefix)}*.tmp")) if folder.is_dir() else []:
        match = owned.fullmatch(path.name)
        if not match or match["host"] != HOST or pid_alive(int(match["pid"])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def owned_tempdir(folder: Path, prefix: str) -> Path:
    """A new folder ``folder/<prefix><host>-<pid>.<random>.tmp``, after removing the ones
    of that prefix whose owner is gone."""
    folder.mkdir(parents=True, exist_ok=True)
    sweep_stale(folder, prefix)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{HOST}-{os.getpid()}.", suffix=".tmp", dir=folder))


@contextlib.contextmanager
def scratch_dir(folder: str | Path, prefix: str = ".download.") -> Iterator[Path]:
    """A temporary folder in ``folder`` (the same disk as the output: a download goes
    there, never into the output), removed on any exit."""
    tmp = owned_tempdir(Path(folder), prefix)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """SIGTERM (``kill``, an engine cancelling a job) raises SystemExit(143) in the main
    thread while this block runs, so that every ``finally`` runs and temporary files go;
    its default action ends the process on the spot. Elsewhere, or where another handler
    is installed, nothing changes."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def unwind(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name, then swap it in for ``target``.

    The old folder survives until the new one is complete, so a failure while
    building leaves the previous output untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old")
    if old.exists() and not target.exists():
        # A kill between the two renames below: put the previous output back.
        os.replace(old, target)
    tmp = owned_tempdir(target.parent, f".{target.name}.")
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; mkdir() would not
        yield tmp
        shutil.rmtree(old, ignore_errors=True)
        had_old = target.exists()
        if had_old:
            os.replace(target, old)
        os.replace(tmp, target)
        if had_old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
