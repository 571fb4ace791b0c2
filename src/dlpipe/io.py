"""Atomic file writes, a stage's outputs as one set, checksums.

Every output goes to a temporary file in the destination folder, is flushed to
disk, then renamed over the target: a killed stage never leaves a half file
that looks finished, and a failed stage leaves the previous output in place.
Inside ``outputs_together`` (``python -m dlpipe`` runs every stage in one) the
renames wait until the stage has succeeded, so its outputs are replaced as one
set or not at all; progress (checkpoints) is written ``immediate``.

Temporary files and folders carry their owner in their name, host and pid
(``.<name>.<host>-<pid>.<random>.tmp``): a run that was killed (SIGKILL, a lost
node) leaves one behind, and the next run removes those whose process is gone,
never one that a live process (another stage, another engine) is still filling.

The system refusing a write (a full disk, a read-only folder, a file size limit)
raises ``FileRefused`` naming the target, not the temporary name the system saw
(or nothing: torch.save turns the OSError into a RuntimeError without the path).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import IO, Iterator

from dlpipe.errors import REMEDIES, FileRefused, PipelineError
from dlpipe.signals import sigint_deferred


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# The outputs_together block open in this process: [(temporary, target)] waiting for their
# rename (None: no block, every write is renamed at once); and the staging folders of the
# atomic_dir blocks open now, whose contents are renamed with the folder.
_PENDING: list[tuple[Path, Path]] | None = None
_STAGING: list[Path] = []


def _owner() -> str:
    """``<host>-<pid>``: who a temporary name belongs to (the pid at the call: a fork has its own)."""
    return f"{HOST}-{os.getpid()}"


def _inside(path: str | Path, folder: Path) -> Path | None:
    """``path`` relative to ``folder`` when it is that folder or under it, else None."""
    path, folder = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return path.relative_to(folder) if path == folder or folder in path.parents else None


def _refusal(exc: BaseException, target: Path, tmp: Path | None) -> FileRefused | None:
    """``exc`` as the FileRefused of ``target`` when it is the system refusing a write of the
    temporary ``tmp`` (or a file under it): an OSError naming it or no file, one raised before
    ``tmp`` existed, a nested atomic write's FileRefused, or torch.save's RuntimeError whose
    context is the OSError. None: any other error, which keeps its own name."""
    if isinstance(exc, FileRefused):
        path, code = exc.path, exc.code
    elif isinstance(exc, OSError):
        path, code = exc.filename, exc.errno
    elif isinstance(exc, RuntimeError) and isinstance(exc.__context__, OSError):
        path, code = exc.__context__.filename, exc.__context__.errno
    else:
        return None
    if code not in REMEDIES:
        return None
    if path is None or tmp is None:
        return FileRefused(target, code)
    inner = _inside(path, tmp)
    return None if inner is None else FileRefused(target / inner, code)


class _NamedRefusals:
    """A block whose refused writes raise FileRefused naming ``target`` (see ``_refusal``);
    set ``tmp`` once the temporary exists."""

    def __init__(self, target: Path):
        self.target, self.tmp = target, None

    def __enter__(self) -> "_NamedRefusals":
        return self

    def __exit__(self, kind, exc, traceback) -> bool:
        refused = _refusal(exc, self.target, self.tmp) if exc is not None else None
        if refused is not None:
            raise refused from None
        return False


def _deferred(tmp: Path, target: Path, immediate: bool) -> bool:
    """Whether the rename of ``tmp`` over ``target`` waits for the outputs_together block
    (True: it is queued there) rather than happening now."""
    if _PENDING is None or immediate or any(_inside(target, staging) for staging in _STAGING):
        return False
    _PENDING.append((tmp, target))
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(target: str | Path, immediate: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success, or,
    inside ``outputs_together``, when that block succeeds (``immediate``: now regardless:
    progress such as a checkpoint, which must be on disk when written)."""
    target = Path(target)
    with _NamedRefusals(target) as refusals:
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(target.parent, f".{target.name}.")
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_owner()}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        refusals.tmp = tmp_path = Path(tmp)
        queued = False
        try:
            # mkstemp makes it 0600; the finished file gets the mode a plain open() would.
            os.chmod(tmp_path, 0o666 & ~_umask())
            yield tmp_path
            with open(tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
            queued = _deferred(tmp_path, target, immediate)
            if not queued:
                os.replace(tmp_path, target)
        finally:
            if not queued:
                tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def outputs_together() -> Iterator[None]:
    """Every atomic write in this block (``atomic_path``, ``atomic_dir``) is kept under its
    temporary name, and all are renamed over their targets, in order, when the block ends
    without an exception (Ctrl-C waits for the renames); on any exception, Ctrl-C included,
    none is and the temporaries are removed. Not held back: ``immediate`` writes, and files
    inside an open ``atomic_dir`` staging folder (the folder is renamed as one). A nested
    block joins the outer one."""
    global _PENDING
    if _PENDING is not None:
        yield
        return
    _PENDING = pending = []
    try:
        yield
        with sigint_deferred():
            while pending:
                tmp, target = pending[0]
                with _NamedRefusals(target) as refusals:
                    refusals.tmp = tmp
                    if tmp.is_dir():
                        _swap_dir(tmp, target)
                    else:
                        os.replace(tmp, target)
                pending.pop(0)
    finally:
        _PENDING = None
        for tmp, _ in pending:
            _remove(tmp)


@contextlib.contextmanager
def atomic_open(target: str | Path, mode: str = "w") -> Iterator[IO]:
    with atomic_path(target) as tmp, open(tmp, mode) as fh:
        yield fh


def write_json(target: str | Path, obj: object) -> None:
    with atomic_open(target) as fh:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")


def read_json_document(path: str | Path, producer: str):
    """The JSON document written by stage ``producer`` (any JSON value); a missing or
    unparsable file names that stage. Python reads NaN and Infinity, which are not JSON:
    a layout's schema (``dlpipe.layouts.JsonFile``) refuses them."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run {producer} first")
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PipelineError(f"{path}: not JSON ({type(exc).__name__}); rerun {producer}") from None


def read_json(path: str | Path, producer: str) -> dict:
    """A JSON object written by stage ``producer``; a missing or damaged file names that stage."""
    record = read_json_document(path, producer)
    if not isinstance(record, dict):
        raise PipelineError(f"{path}: expected a JSON object; rerun {producer}")
    return record


def write_metrics(metrics, details, numbers: dict, headline: tuple[str, ...]) -> None:
    """A stage's results: every number (and note) in ``details``, and the ``headline`` keys
    alone in ``metrics``, its DVC metrics file (both ``dlpipe.layouts.metrics_files``). One
    table of `dvc metrics show` lists every metrics file's keys side by side: headline keys
    only keep it as wide as a terminal."""
    details.write(details.pattern, numbers)
    metrics.write(metrics.pattern, {key: numbers[key] for key in headline if key in numbers})


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
        _remove(path)
        removed.append(path)
    return removed


def owned_tempdir(folder: Path, prefix: str) -> Path:
    """A new folder ``folder/<prefix><host>-<pid>.<random>.tmp``, after removing the ones
    of that prefix whose owner is gone."""
    folder.mkdir(parents=True, exist_ok=True)
    sweep_stale(folder, prefix)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{_owner()}.", suffix=".tmp", dir=folder))


@contextlib.contextmanager
def scratch_dir(folder: str | Path, prefix: str = ".download.") -> Iterator[Path]:
    """A temporary folder in ``folder`` (the same disk as the output: a download goes
    there, never into the output), removed on any exit."""
    tmp = owned_tempdir(Path(folder), prefix)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_dir(tmp: Path, target: Path) -> None:
    """Put the finished folder ``tmp`` in place of ``target``, the old one kept as
    ``.<name>.old`` between the two renames (``atomic_dir`` puts it back after a kill there)."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    had_old = target.exists()
    if had_old:
        os.replace(target, old)
    os.replace(tmp, target)
    if had_old:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: str | Path, immediate: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name, then swap it in for ``target`` (inside
    ``outputs_together``: when that block succeeds, unless ``immediate``).

    The old folder survives until the new one is complete, so a failure while
    building leaves the previous output untouched.
    """
    target = Path(target)
    with _NamedRefusals(target) as refusals:
        target.parent.mkdir(parents=True, exist_ok=True)
        old = target.with_name(f".{target.name}.old")
        if old.exists() and not target.exists():
            # A kill between the two renames of _swap_dir: put the previous output back.
            os.replace(old, target)
        refusals.tmp = tmp = owned_tempdir(target.parent, f".{target.name}.")
        _STAGING.append(tmp)
        queued = False
        try:
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; mkdir() would not
            yield tmp
            queued = _deferred(tmp, target, immediate)
            if not queued:
                _swap_dir(tmp, target)
        finally:
            _STAGING.remove(tmp)
            if not queued:
                shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
