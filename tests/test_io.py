"""Atomic writes: a failed or killed writer leaves the previous output as it was."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import engine_env
from dlpipe.errors import PipelineError
from dlpipe.io import atomic_dir, atomic_open, atomic_path, read_json, sha256_file, write_json, write_text


class Boom(Exception):
    pass


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_write_json_replaces_content(tmp_path):
    target = tmp_path / "sub" / "m.json"
    write_json(target, {"a": 1, "b": [1, 2]})
    assert json.loads(target.read_text()) == {"a": 1, "b": [1, 2]}
    write_json(target, {"c": 0.5})
    assert json.loads(target.read_text()) == {"c": 0.5}
    assert target.read_text().endswith("\n")
    assert listing(target.parent) == ["m.json"]


def test_read_json_names_the_stage_that_writes_a_missing_or_broken_record(tmp_path):
    record = tmp_path / "record.json"
    write_json(record, {"cv_rmsle": 0.12})
    assert read_json(record, producer="cv_houses") == {"cv_rmsle": 0.12}
    for content, why in ((None, "not found; run cv_houses first"),
                         ("{cut", "not JSON (JSONDecodeError); rerun cv_houses"),
                         ("[1, 2]", "expected a JSON object; rerun cv_houses")):
        if content is None:
            record.unlink()
        else:
            record.write_text(content)
        with pytest.raises(PipelineError) as caught:
            read_json(record, producer="cv_houses")
        assert str(caught.value) == f"{record}: {why}"


def test_write_text_and_binary_atomic_open(tmp_path):
    target = tmp_path / "t.txt"
    write_text(target, "first, and longer than the second\n")
    write_text(target, "second\n")
    assert target.read_text() == "second\n"
    blob = bytes(range(256)) * 10
    with atomic_open(tmp_path / "b.bin", "wb") as fh:
        fh.write(blob)
    assert (tmp_path / "b.bin").read_bytes() == blob
    assert listing(tmp_path) == ["b.bin", "t.txt"]


def test_target_is_untouched_until_the_block_ends(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    with atomic_open(target) as fh:
        fh.write("new")
        fh.flush()
        assert target.read_text() == "old"
        temp = Path(fh.name)
        assert temp.parent == tmp_path and temp.name.startswith(".x.txt.") and temp.name.endswith(".tmp")
    assert target.read_text() == "new"
    assert not temp.exists()


def test_exception_inside_atomic_open_keeps_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.csv"
    old = b"id,value\n1,2\n" * 100
    target.write_bytes(old)
    with pytest.raises(Boom):
        with atomic_open(target, "wb") as fh:
            fh.write(b"half written")
            fh.flush()
            raise Boom
    assert target.read_bytes() == old
    assert listing(tmp_path) == ["out.csv"]


def test_exception_inside_atomic_open_creates_no_target(tmp_path):
    with pytest.raises(Boom):
        with atomic_path(tmp_path / "new.pt") as tmp:
            tmp.write_bytes(b"partial")
            raise Boom
    assert listing(tmp_path) == []


def test_atomic_dir_success_swaps_the_whole_folder(tmp_path):
    target = tmp_path / "prepared"
    target.mkdir()
    (target / "stale.txt").write_text("from an older run")
    with atomic_dir(target) as staging:
        (staging / "a.txt").write_text("A")
        (staging / "deep").mkdir()
        (staging / "deep" / "b.txt").write_text("B")
        assert (target / "stale.txt").exists()  # the old folder is still in place
    assert snapshot(target) == {"a.txt": b"A", "deep/b.txt": b"B"}
    assert listing(tmp_path) == ["prepared"]  # no staging or .old folder left


def test_atomic_dir_failure_leaves_old_folder_intact(tmp_path):
    target = tmp_path / "raw"
    (target / "nested").mkdir(parents=True)
    (target / "train.csv").write_bytes(b"Id,SalePrice\n1,100\n")
    (target / "nested" / "x.bin").write_bytes(os.urandom(1000))
    before = snapshot(target)
    with pytest.raises(Boom):
        with atomic_dir(target) as staging:
            (staging / "train.csv").write_bytes(b"partial")
            raise Boom
    assert snapshot(target) == before
    assert listing(tmp_path) == ["raw"]


def test_atomic_dir_failure_without_old_folder_creates_nothing(tmp_path):
    with pytest.raises(Boom):
        with atomic_dir(tmp_path / "new") as staging:
            (staging / "f").write_text("x")
            raise Boom
    assert listing(tmp_path) == []


KILLED_WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from dlpipe.io import atomic_open

    target, marker = Path(sys.argv[1]), Path(sys.argv[2])
    data = bytes(range(256)) * 4096
    with atomic_open(target, "wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        os.fsync(fh.fileno())
        marker.write_text(fh.name)
        time.sleep(120)
        fh.write(data[len(data) // 2 :])
    """
)


def test_sigkill_inside_atomic_open_leaves_old_target(tmp_path):
    out, side = tmp_path / "out", tmp_path / "side"
    out.mkdir()
    side.mkdir()
    target, marker = out / "model.pt", side / "marker"
    old = os.urandom(5000)
    target.write_bytes(old)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target), str(marker)], env=engine_env())
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, f"writer exited early with {proc.returncode}"
            assert time.monotonic() < deadline, "writer never reached the marker"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert target.read_bytes() == old
    # What the killed writer leaves is a hidden temp file, never the target name.
    leftovers = [p for p in out.iterdir() if p != target]
    assert [p.name for p in leftovers] == [Path(marker.read_text()).name]
    (leftover,) = leftovers
    assert leftover.name.startswith(".model.pt.") and leftover.name.endswith(".tmp")
    assert leftover.read_bytes() == (bytes(range(256)) * 4096)[: 256 * 4096 // 2]  # really killed mid-write


@pytest.mark.parametrize("chunk", [1 << 20, 7, 1])
def test_sha256_file_matches_hashlib(tmp_path, chunk):
    data = b"The quick brown fox jumps over the lazy dog\n" * 37 + bytes(range(256))
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path, chunk=chunk) == hashlib.sha256(data).hexdigest()


def test_sha256_file_empty_and_known_vector(tmp_path):
    empty, abc = tmp_path / "empty", tmp_path / "abc"
    empty.write_bytes(b"")
    abc.write_bytes(b"abc")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()
    assert sha256_file(abc) == hashlib.sha256(b"abc").hexdigest()
    assert sha256_file(abc) != sha256_file(empty)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002], ids=oct)
def test_atomic_outputs_get_the_modes_plain_writes_would(tmp_path, mask):
    old_mask = os.umask(mask)
    try:
        plain_file, plain_dir = tmp_path / "plain.txt", tmp_path / "plain"
        plain_file.write_text("x")
        plain_dir.mkdir()
        write_text(tmp_path / "atomic.txt", "x")
        with atomic_dir(tmp_path / "atomic") as staging:
            (staging / "f").write_text("y")
    finally:
        os.umask(old_mask)
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "atomic.txt") == mode(plain_file)
    assert mode(tmp_path / "atomic") == mode(plain_dir)


def test_atomic_dir_restores_the_old_folder_after_a_kill_between_renames(tmp_path):
    target = tmp_path / "houses"
    target.mkdir()
    (target / "train.csv").write_text("old")
    # The state a kill leaves between `target -> .old` and `tmp -> target`.
    os.replace(target, tmp_path / ".houses.old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as staging:
            (staging / "train.csv").write_text("half")
            raise RuntimeError("killed again")
    assert (target / "train.csv").read_text() == "old"
    assert not (tmp_path / ".houses.old").exists()
