"""A full disk, a read-only folder, Ctrl-C: one line and no traceback; a stage's outputs
replaced as one set; temporary files removed only when their owner is gone.

The refusals are the kernel's own where a test can cause them: a folder without write
permission (as root, which ignores the mode bits, the child drops to ``nobody`` first),
and a file size limit (``RLIMIT_FSIZE``: past it write(2) fails with EFBIG, as it fails
with ENOSPC on a full disk; SIGXFSZ, which would end the process, is ignored, as it is
where such a limit is set for a shell). A full disk itself needs a disk to fill; there
a file object whose write() raises OSError(ENOSPC) after the first bytes stands in, as
Python's own file object does when write(2) fails: the same exception from the same call.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import REPO, engine_env
from dlpipe.errors import REMEDIES
from dlpipe.io import HOST, atomic_path, outputs_together, write_text
from dlpipe.training.checkpoint import load_resumable

# Runs `python -m dlpipe evaluate_houses` (dlpipe.__main__.main) with its main() replaced
# by the writer of a case, or, for "between_outputs", the real stage with the write of its
# second output failing with ENOSPC after the first (the submission) was written.
DRIVER = textwrap.dedent(
    """
    import contextlib, errno, io, os, resource, signal, sys
    from pathlib import Path
    import torch
    from dlpipe import __main__ as cli, io as dio, tensor_io
    from dlpipe.stages import evaluate_houses

    def full():
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class FullDisk(io.FileIO):
        "A file on a disk with 64 KiB free: write() takes them, then fails as write(2) does."
        def write(self, data):
            if self.tell() + len(data) > 1 << 16:
                raise full()
            return super().write(data)

    def weights(params):
        tensor_io.save_weights("models/houses.pt", {"w": torch.zeros(1 << 20)})  # 4 MiB

    def drop_root():
        # root may write anywhere: as nobody the folder's mode bits apply again.
        if os.geteuid() == 0:
            os.setegid(65534)
            os.seteuid(65534)

    case = sys.argv[1]
    if case == "full_disk":
        tensor_io.open = FullDisk
        evaluate_houses.main = weights
    elif case == "file_size_limit":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))  # bytes
        evaluate_houses.main = weights
    elif case == "read_only_folder":
        drop_root()
        evaluate_houses.main = lambda params: dio.write_text("reports/locked/submission.csv", "Id\\n")
    elif case == "read_only_plain_open":
        drop_root()
        evaluate_houses.main = lambda params: open("reports/locked/notes.txt", "w")
    elif case == "ctrl_c":
        def interrupted(params):
            raise KeyboardInterrupt
        evaluate_houses.main = interrupted
    elif case == "between_outputs":
        real = dio.atomic_open
        @contextlib.contextmanager
        def failing(target, mode="w"):
            with real(target, mode) as fh:
                if Path(target) == evaluate_houses.VAL_PREDICTIONS:
                    raise full()
                yield fh
        dio.atomic_open = failing
    sys.exit(cli.main(["evaluate_houses"]))
    """
)


def drive(root: Path, case: str | None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", DRIVER, case] if case else [sys.executable, "-m", "dlpipe", "evaluate_houses"]
    return subprocess.run(command, cwd=root, env=engine_env(PYTHONPATH=str(REPO / "src")), capture_output=True,
                          text=True, timeout=300)


def one_line(proc: subprocess.CompletedProcess, status: int) -> str:
    assert proc.returncode == status, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def workspace(tmp_path) -> Path:
    """params.yaml and an old models/houses.pt; readable by ``nobody`` (relative paths from
    the working folder: its parents' modes do not matter)."""
    root = tmp_path / "ws"
    (root / "models").mkdir(parents=True)
    shutil.copy2(REPO / "params.yaml", root)
    (root / "models" / "houses.pt").write_bytes(b"the previous weights")
    for folder in (root, root / "models"):
        folder.chmod(0o755)
    return root


REFUSED = {
    "full_disk": ("models/houses.pt", errno.ENOSPC, "no space left on device"),
    "file_size_limit": ("models/houses.pt", errno.EFBIG, "file too large"),
    "read_only_folder": ("reports/locked/submission.csv", errno.EACCES, "permission denied"),
    "read_only_plain_open": ("reports/locked/notes.txt", errno.EACCES, "permission denied"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_refused_write_is_one_line_naming_the_file_and_the_cause(workspace, case):
    path, code, cause = REFUSED[case]
    locked = workspace / "reports" / "locked"
    locked.mkdir(parents=True)
    locked.chmod(0o555)
    try:
        line = one_line(drive(workspace, case), 2)
    finally:
        locked.chmod(0o755)
    # torch.save hides both the path and the errno ("unexpected pos ..."): the atomic write names them.
    assert line == f"error: {path}: {cause} ({errno.errorcode[code]}); {REMEDIES[code]}"
    assert (workspace / "models" / "houses.pt").read_bytes() == b"the previous weights"
    assert listing(workspace / "models") == ["houses.pt"] and listing(locked) == []  # no temporary left


def test_ctrl_c_outside_training_is_one_line_and_status_130(workspace):
    assert one_line(drive(workspace, "ctrl_c"), 130) == "interrupted: nothing to resume; rerun to start again"


@pytest.fixture(scope="module")
def houses_run(tiny_dvc_run, tmp_path_factory) -> Path:
    """The finished tiny run's files (hard links: every write replaces a file, never writes into it)."""
    root = tmp_path_factory.mktemp("outputs_together")
    for rel in ("data", "models", "reports", "params.yaml"):
        src = tiny_dvc_run.repo / rel
        shutil.copytree(src, root / rel, copy_function=os.link) if src.is_dir() else shutil.copy2(src, root)
    return root


EVALUATE_HOUSES = ("reports/submission.csv", "reports/details/houses.json", "reports/metrics/houses.json",
                   "reports/plots/houses/val_predictions.csv")


def test_a_failure_between_two_outputs_replaces_none_and_a_success_all(houses_run):
    before = {rel: (houses_run / rel).read_bytes() for rel in EVALUATE_HOUSES}
    # Each output a different old content, so that a replaced one shows.
    for rel in EVALUATE_HOUSES:
        (houses_run / rel).unlink()
        (houses_run / rel).write_bytes(b"old " + rel.encode())
    line = one_line(drive(houses_run, "between_outputs"), 2)
    assert line == ("error: reports/plots/houses/val_predictions.csv: no space left on device (ENOSPC); "
                    f"{REMEDIES[errno.ENOSPC]}")
    assert {rel: (houses_run / rel).read_bytes() for rel in EVALUATE_HOUSES} == \
           {rel: b"old " + rel.encode() for rel in EVALUATE_HOUSES}, "a new output beside old ones"
    assert not [p for p in (houses_run / "reports").rglob(".*") if p.name.endswith(".tmp")]

    for rel in EVALUATE_HOUSES:  # as an engine leaves them before a rerun
        (houses_run / rel).unlink()
    one_line(drive(houses_run, None), 0)
    assert {rel: (houses_run / rel).read_bytes() for rel in EVALUATE_HOUSES} == before


def test_outputs_together_holds_renames_until_the_block_succeeds(tmp_path):
    with outputs_together():
        write_text(tmp_path / "a.txt", "A")
        with atomic_path(tmp_path / "progress.pt", immediate=True) as tmp:
            tmp.write_bytes(b"epoch 1")
        assert (tmp_path / "progress.pt").read_bytes() == b"epoch 1" and not (tmp_path / "a.txt").exists()
    assert (tmp_path / "a.txt").read_text() == "A"
    with pytest.raises(KeyboardInterrupt), outputs_together():
        write_text(tmp_path / "a.txt", "B")
        raise KeyboardInterrupt
    assert listing(tmp_path) == ["a.txt", "progress.pt"] and (tmp_path / "a.txt").read_text() == "A"


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


# Holds an atomic write of a checkpoint open until told to finish: a run writing its checkpoint.
WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from dlpipe.io import atomic_open

    target, marker, go = map(Path, sys.argv[1:])
    with atomic_open(target, "wb") as fh:
        fh.write(b"epoch 3")
        fh.flush()
        marker.write_text(fh.name)
        while not go.exists():
            time.sleep(0.02)
    """
)


def test_a_second_run_removes_only_the_temporary_files_of_dead_owners(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    checkpoint = folder / "last.pt"
    marker, go = tmp_path / "marker", tmp_path / "go"
    stale = folder / f".last.pt.{HOST}-{dead_pid()}.abcd1234.tmp"
    elsewhere = folder / ".last.pt.otherhost-1.abcd1234.tmp"  # its pid says nothing here
    for path in (stale, elsewhere):
        path.write_bytes(b"half")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, checkpoint, marker, go],
                              env=engine_env(PYTHONPATH=str(REPO / "src")))
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert writer.poll() is None and time.monotonic() < deadline, "the writer never got there"
            time.sleep(0.02)
        live = Path(marker.read_text())
        assert live.name.startswith(f".last.pt.{HOST}-{writer.pid}.")
        assert load_resumable(checkpoint, "identity") is None  # a second run starts
        assert sorted(folder.iterdir()) == sorted([live, elsewhere])
        go.write_text("")
        assert writer.wait(timeout=60) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert checkpoint.read_bytes() == b"epoch 3"
    assert sorted(folder.iterdir()) == sorted([checkpoint, elsewhere])
