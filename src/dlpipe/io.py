"""Atomic file writes and checksums.

Every output goes to a temporary file in the destination folder, is flushed to
disk, then renamed over the target: a killed stage never leaves a half file
that looks finished, and a failed stage leaves the previous output in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator


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


def write_metrics(metrics: Path, details: Path, numbers: dict, headline: tuple[str, ...]) -> None:
    """A stage's results: every number (and note) in ``details``, and the ``headline`` keys
    alone in ``metrics``, its DVC metrics file. One table of `dvc metrics show` lists every
    metrics file's keys side by side: headline keys only keep it as wide as a terminal."""
    write_json(details, numbers)
    write_json(metrics, {key: numbers[key] for key in headline if key in numbers})


def write_text(target: str | Path, text: str) -> None:
    with atomic_open(target) as fh:
        fh.write(text)


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
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
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
