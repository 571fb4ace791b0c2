"""Downloads and archives at their edges, against servers on 127.0.0.1: a trickling
server ended by the deadline, a silent one by the stall timeout, archive members over
the size caps refused before anything is written, and temporary files removed on any
exit (an error, Ctrl-C, SIGTERM), a killed run's leftovers by the next run, but never
those of a live process."""

from __future__ import annotations

import _thread
import os
import re
import select
import signal
import socketserver
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import LocalServer, engine_env, limits, set_key
from dlpipe.data import houses_fetch, transfer_fetch
from dlpipe.data.archives import download, safe_extract_tar, safe_extract_zip
from dlpipe.errors import PipelineError
from dlpipe.io import HOST, atomic_dir, scratch_dir
from dlpipe.signals import sigterm_unwinds
from test_transfer_data import ZIP, build_zip, faces_cfg

REPO = Path(__file__).resolve().parents[1]
HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"


# --------------------------------------------------------------------------- servers that misbehave


class SlowServer:
    """A TCP server on 127.0.0.1 whose every connection gets ``behaviour(sock)``; a
    behaviour ends when the client hangs up (or after 60 s)."""

    def __init__(self, behaviour):
        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                try:
                    behaviour(self.request)
                except OSError:  # the client hung up
                    pass

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads, block_on_close, allow_reuse_address = True, False, True

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/{ZIP}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def hung_up(sock, seconds: float) -> bool:
    """Wait up to ``seconds``; True as soon as the client has closed the connection."""
    readable, _, _ = select.select([sock], [], [], seconds)
    return bool(readable) and not sock.recv(1 << 16)


def trickle(sock, first: bytes = HEADERS, every_s: float = 0.1, limit_s: float = 60):
    """The request read, then ``first``, then one byte every ``every_s`` seconds."""
    sock.recv(1 << 16)
    sock.sendall(first)
    end = time.monotonic() + limit_s
    while time.monotonic() < end and not hung_up(sock, every_s):
        sock.sendall(b"x")


def stall(sock):
    """Headers and 10 bytes, then nothing."""
    sock.recv(1 << 16)
    sock.sendall(HEADERS + b"0123456789")
    hung_up(sock, 60)


def silent(sock):
    sock.recv(1 << 16)
    hung_up(sock, 60)


def trickle_headers(sock):
    """The status line, then a header byte every 0.1 s: urlopen itself never returns."""
    trickle(sock, first=b"HTTP/1.1 200 OK\r\nX-Slow: ")


@pytest.fixture
def server(request):
    made = SlowServer(request.param)
    yield made
    made.close()


# --------------------------------------------------------------------------- the deadline and the stall timeout


DEADLINE_PASSED = (r"download of {url} did not finish within its deadline of 1\.5 s: \d+ bytes{total} had arrived "
                   r"\(params 'transfer\.data\.hymenoptera_url'\)")


@pytest.mark.parametrize(("server", "expect"), [
    (trickle, DEADLINE_PASSED.replace("{total}", " of 100000")),
    # Its headers cut off at the deadline end where they are: no length announced.
    (trickle_headers, DEADLINE_PASSED.replace("{total}", "")),
], indirect=["server"], ids=["body", "headers"])
def test_a_trickling_server_is_stopped_by_the_deadline(server, expect, tmp_path):
    dest = tmp_path / ZIP
    start = time.monotonic()
    with pytest.raises(PipelineError) as info:
        download(server.url, dest, "", "transfer.data.hymenoptera_url", "transfer.data.hymenoptera_md5",
                 limits(stall_s=1.0, deadline_s=1.5))
    elapsed = time.monotonic() - start
    assert 1.4 < elapsed < 5, elapsed  # a byte every 0.1 s: the 1 s stall timeout never fires
    assert re.fullmatch(expect.format(url=re.escape(server.url)), str(info.value)), str(info.value)
    assert not dest.exists()  # no partial download


@pytest.mark.parametrize(("server", "expect"), [
    (stall, "download of {url} stalled: no data for 0.5 s after 10 bytes (params 'k.url')"),
    (silent, "could not download {url}: no answer within 0.5 s (params 'k.url')"),
], indirect=["server"], ids=["after-10-bytes", "no-answer"])
def test_a_server_that_stops_sending_is_given_up_after_the_stall_timeout(server, expect, tmp_path):
    start = time.monotonic()
    with pytest.raises(PipelineError) as info:
        download(server.url, tmp_path / ZIP, "", "k.url", "k.md5", limits(stall_s=0.5, deadline_s=30))
    assert time.monotonic() - start < 5
    assert str(info.value) == expect.format(url=server.url)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("server", [trickle], indirect=True)
def test_the_deadline_of_a_fetch_is_its_param_and_nothing_is_left(server, tmp_path):
    """Through the fetch of the transfer data, the deadline as the stage has it
    (downloads.deadline_s): both temporary folders go, the previous output stays."""
    out = tmp_path / "raw" / "transfer"
    transfer_fetch.fetch(faces_cfg(), out, limits())
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    cfg = faces_cfg(name="hymenoptera", hymenoptera_url=server.url)
    with pytest.raises(PipelineError, match=r"did not finish within its deadline of 1 s"):
        transfer_fetch.fetch(cfg, out, limits(deadline_s=1.0))
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [p.name for p in out.parent.iterdir()] == ["transfer"]


@pytest.mark.parametrize("server", [trickle], indirect=True)
def test_ctrl_c_during_a_download_removes_the_partial_file_and_the_scratch_folder(server, tmp_path):
    def interrupt_when_started():
        while not list(tmp_path.rglob(ZIP)):
            time.sleep(0.05)
        _thread.interrupt_main()  # as Ctrl-C would

    # Ctrl-C as a terminal delivers it, however pytest was started: a background job of a
    # shell inherits SIGINT ignored, and interrupt_main then does nothing.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=interrupt_when_started, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            with scratch_dir(tmp_path) as scratch:
                download(server.url, scratch / ZIP, "", "k.url", "k.md5", limits(stall_s=5, deadline_s=30))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert list(tmp_path.iterdir()) == []


def _params_for(url: str, path: Path) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    set_key(raw, "transfer.data.name", "hymenoptera")
    set_key(raw, "transfer.data.hymenoptera_url", url)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.mark.parametrize("server", [trickle], indirect=True)
def test_sigterm_during_a_fetch_stage_removes_its_temporary_folders(server, tmp_path):
    """``python -m dlpipe fetch_transfer`` killed with SIGTERM mid-download: exit status
    143 and nothing of the run left under data/raw."""
    _params_for(server.url, tmp_path / "p.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "dlpipe", "fetch_transfer", "--params", "p.yaml"], cwd=tmp_path,
                            env=engine_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    raw = tmp_path / "data" / "raw"
    try:
        deadline = time.monotonic() + 120
        while not list(raw.glob(f".download.*/{ZIP}")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()
        started = sorted(p.name for p in raw.iterdir())
        assert any(name.startswith(f".transfer.{HOST}-{proc.pid}.") for name in started), started
        assert any(name.startswith(f".download.{HOST}-{proc.pid}.") for name in started), started
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert status == 128 + signal.SIGTERM
    assert "Traceback" not in proc.stderr.read()
    assert list(raw.iterdir()) == []


# --------------------------------------------------------------------------- archive caps


def zip_bomb(path: Path, member: str, size: int) -> None:
    """A zip holding ``member``: ``size`` zero bytes, deflated to about size / 1000."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("hymenoptera_data/train/ants/ok.jpg", b"tiny")
        with zf.open(member, "w") as out:
            block = bytes(1 << 20)
            for _ in range(size >> 20):
                out.write(block)


def test_a_zip_bomb_member_is_refused_before_anything_is_written(tmp_path):
    bomb = tmp_path / "bomb.zip"
    zip_bomb(bomb, "hymenoptera_data/train/ants/big.jpg", 200 << 20)
    assert bomb.stat().st_size < 400_000  # a few hundred KB
    dest = tmp_path / "out"
    dest.mkdir()
    start = time.monotonic()
    with pytest.raises(PipelineError) as info:
        safe_extract_zip(bomb, dest, "bomb.zip from http://127.0.0.1/bomb.zip", limits(max_member_mib=1))
    assert str(info.value) == (
        "bomb.zip from http://127.0.0.1/bomb.zip: member 'hymenoptera_data/train/ants/big.jpg' is 200.0 MiB "
        "(209715200 bytes) once extracted, over the cap of 1.0 MiB (1048576 bytes) for one member (params "
        "'downloads.max_member_mib'); refusing to extract it (an archive bomb, or not the dataset?)")
    assert time.monotonic() - start < 5
    assert list(dest.iterdir()) == []  # not even the small member before it


def test_members_that_add_up_past_the_archive_cap_are_refused(tmp_path):
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(4):
            zf.writestr(f"part{i}.bin", bytes(1 << 20))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(PipelineError) as info:
        safe_extract_zip(archive, dest, "many.zip", limits(max_archive_mib=3))
    assert str(info.value) == ("many.zip: the members up to 'part3.bin' add up to 4.0 MiB (4194304 bytes) once "
                               "extracted, over the cap of 3.0 MiB (3145728 bytes) for one archive (params "
                               "'downloads.max_archive_mib'); refusing to extract it")
    assert list(dest.iterdir()) == []


def test_a_tar_member_over_the_cap_is_refused_from_its_header(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = 100 << 20
        with open("/dev/zero", "rb") as zeros:
            tar.addfile(info, zeros)
    assert archive.stat().st_size < 400_000
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(PipelineError, match=r"member 'cifar-10-batches-py/data_batch_1' is 100\.0 MiB \(104857600 "
                                            r"bytes\) once extracted, over the cap of 1\.0 MiB"):
        safe_extract_tar(archive, dest, archive.name, limits(max_member_mib=1))
    assert list(dest.iterdir()) == []


def test_a_zip_bomb_through_the_fetch_leaves_the_previous_output(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    build_zip(site / ZIP)
    with zipfile.ZipFile(site / ZIP, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("hymenoptera_data/val/bees/huge.jpg", bytes(8 << 20))
    files = LocalServer(site)
    out = tmp_path / "raw" / "transfer"
    try:
        transfer_fetch.fetch(faces_cfg(), out, limits())
        before = sorted(p.relative_to(out) for p in out.rglob("*"))
        with pytest.raises(PipelineError, match=r"member 'hymenoptera_data/val/bees/huge\.jpg' is 8\.0 MiB"):
            transfer_fetch.fetch(faces_cfg(name="hymenoptera", hymenoptera_url=f"{files.url}/{ZIP}"), out,
                                 limits(max_member_mib=1))
    finally:
        files.close()
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [p.name for p in out.parent.iterdir()] == ["transfer"]


def test_a_wheel_member_over_the_cap_is_refused(tmp_path):
    wheel = tmp_path / "big-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("dat/train.csv", bytes(2 << 20))
        zf.writestr("dat/test.csv", b"Id\n1\n")
    with pytest.raises(PipelineError, match=r"big-1\.0-py3-none-any\.whl: member 'dat/train\.csv' is 2\.0 MiB"):
        houses_fetch.extract_from_wheel(wheel, "dat", tmp_path, limits(max_member_mib=1))
    assert not (tmp_path / "train.csv").exists()


# --------------------------------------------------------------------------- leftovers of a killed run


@pytest.fixture
def pids():
    """A pid that is gone (a process that has ended) and one that is alive (a sleeping child)."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = subprocess.Popen(["sleep", "60"])
    yield int(ended.stdout), live.pid
    live.kill()
    live.wait()


def leftovers(folder: Path, prefix: str, dead: int, live: int) -> dict[str, Path]:
    made = {"dead": folder / f"{prefix}{HOST}-{dead}.abcd1234.tmp",
            "live": folder / f"{prefix}{HOST}-{live}.efgh5678.tmp",
            "other-host": folder / f"{prefix}another-host-{dead}.ijkl9012.tmp",
            "unowned": folder / f"{prefix}mnop3456.tmp"}  # no owner in the name (an older run): kept
    for path in made.values():
        (path / "sub").mkdir(parents=True)
        (path / "sub" / "partial.bin").write_bytes(b"half")
    return made


def test_a_new_scratch_folder_removes_only_the_leftovers_of_dead_processes(tmp_path, pids):
    dead, live = pids
    made = leftovers(tmp_path, ".download.", dead, live)
    with scratch_dir(tmp_path) as scratch:
        assert scratch.name.startswith(f".download.{HOST}-{os.getpid()}.") and scratch.name.endswith(".tmp")
        assert not made["dead"].exists()
        assert made["live"].exists() and made["other-host"].exists() and made["unowned"].exists()
    assert not scratch.exists()


def test_atomic_dir_removes_the_staging_folders_of_dead_processes(tmp_path, pids):
    dead, live = pids
    made = leftovers(tmp_path, ".houses.", dead, live)
    twin = leftovers(tmp_path, ".houses_extra.", dead, live)  # another target's: not this one's to judge
    with atomic_dir(tmp_path / "houses") as staging:
        (staging / "train.csv").write_text("Id\n1\n")
    assert (tmp_path / "houses" / "train.csv").is_file()
    assert not made["dead"].exists() and made["live"].exists() and made["other-host"].exists()
    assert twin["dead"].exists()


def test_the_next_fetch_cleans_a_killed_fetchs_leftovers(tmp_path, pids):
    """A killed fetch_houses left its staging folder and its download folder; the next
    run removes both, keeps those of a fetch still running, and succeeds."""
    dead, live = pids
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.csv").write_text("Id,SalePrice\n1,100\n")
    (src / "test.csv").write_text("Id\n2\n")
    raw = tmp_path / "raw"
    raw.mkdir()
    staging = leftovers(raw, ".houses.", dead, live)
    downloads = leftovers(raw, ".download.", dead, live)
    sums = {name: houses_fetch.sha256_file(src / name) for name in houses_fetch.FILES}
    base = houses_fetch.HousesData(source="folder", pypi_package="x==1", pypi_member_dir="d", folder=str(src),
                                   kaggle_competition="c", sha256=sums)
    houses_fetch.fetch(base, raw / "houses", limits())
    assert not staging["dead"].exists() and not downloads["dead"].exists()
    assert staging["live"].exists() and downloads["live"].exists()
    assert sorted(p.name for p in (raw / "houses").iterdir()) == ["test.csv", "train.csv"]


def test_sigterm_outside_the_block_keeps_its_default(tmp_path):
    """sigterm_unwinds restores SIGTERM's default action when its block ends."""
    with sigterm_unwinds():
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
