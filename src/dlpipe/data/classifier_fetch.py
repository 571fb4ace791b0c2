"""Get the image-classification data into data/raw/classifier/ (params ``data.classifier``).

- ``digits``: scikit-learn's handwritten digits (1,797 real 8x8 images, 10
  classes), which ship inside scikit-learn: no network. Stored as
  ``digits.pt`` ({"images": uint8 N x 8 x 8 in 0..16, "labels": int64 N}).
- ``cifar10``: the official CIFAR-10 python archive, downloaded from
  ``cifar10_url``, its md5 checked against ``cifar10_md5``, every member
  checked before anything is extracted (no absolute paths, no '..', no links
  or devices), then extracted as ``cifar-10-batches-py/``.

``source.json`` records which dataset the folder holds. The folder is built
under a temporary name and swapped in only when complete: a failed download,
a wrong md5 or a bad archive leaves the previous data/raw/classifier as it was.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

import torch
from tqdm import tqdm

from dlpipe.config import ClassifierData
from dlpipe.errors import PipelineError
from dlpipe.io import atomic_dir, atomic_path, unsafe_member_path, write_json

log = logging.getLogger(__name__)

RAW_DIR = Path("data/raw/classifier")
SOURCE_JSON = "source.json"  # which dataset the raw folder holds

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
DIGITS_FILE = "digits.pt"
TIMEOUT_S = 60
CHUNK = 1 << 20


def fetch_digits(dest: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).round().to(torch.uint8)  # integer values 0..16
    with atomic_path(dest / DIGITS_FILE) as tmp, open(tmp, "wb") as fh:  # a handle: same bytes each run
        torch.save({"images": images, "labels": torch.from_numpy(digits.target).to(torch.int64)}, fh)
    write_json(dest / SOURCE_JSON, {"name": "digits", "origin": "sklearn.datasets.load_digits",
                                    "class_names": [str(name) for name in digits.target_names]})


def download(url: str, dest: Path, expected_md5: str, url_key: str = "data.classifier.cifar10_url",
             md5_key: str = "data.classifier.cifar10_md5") -> str:
    """Stream ``url`` to ``dest``, checking the length the server announced and the md5
    (skipped when ``expected_md5`` is empty); returns the md5. Errors name the params keys."""
    where = f"(params '{url_key}')"
    try:
        response = urllib.request.urlopen(url, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        raise PipelineError(f"could not download {url}: HTTP {exc.code} {exc.reason} {where}") from None
    except urllib.error.URLError as exc:
        raise PipelineError(f"could not download {url}: {exc.reason} {where}") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise PipelineError(f"could not download {url}: {exc} {where}") from None
    digest, received = hashlib.md5(), 0
    announced = response.headers.get("Content-Length")
    total = int(announced) if announced and announced.isdigit() else None
    try:
        with response, open(dest, "wb") as out, tqdm(total=total, unit="B", unit_scale=True,
                                                     desc=PurePosixPath(url).name, mininterval=1.0) as bar:
            while block := response.read(CHUNK):
                out.write(block)
                digest.update(block)
                received += len(block)
                bar.update(len(block))
    except (OSError, http.client.HTTPException) as exc:
        raise PipelineError(f"download of {url} broke off after {received} bytes: {exc}") from None
    if total is not None and received != total:
        raise PipelineError(f"download of {url} is truncated: {received} of {total} bytes")
    actual = digest.hexdigest()
    if expected_md5 and actual != expected_md5:
        raise PipelineError(
            f"{PurePosixPath(url).name} from {url}: md5 is {actual}, expected {expected_md5} "
            f"(params '{md5_key}'): the download is corrupt or truncated, "
            f"or the md5 in params is wrong"
        )
    return actual


def unsafe_reason(member: tarfile.TarInfo) -> str | None:
    """Why extracting ``member`` could write outside the target folder, or None."""
    if reason := unsafe_member_path(member.name):
        return reason
    if member.issym() or member.islnk():
        return "a link"
    if not (member.isfile() or member.isdir()):
        return "a device, fifo or other special file"
    return None


def safe_extract(archive: Path, dest: Path, label: str) -> None:
    """Check every member first, then extract; any problem names the archive and member."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()  # reads to the end: a truncated archive fails here
            for member in members:
                reason = unsafe_reason(member)
                if reason:
                    raise PipelineError(f"{label}: member {member.name!r} has {reason}; "
                                        "refusing to extract an archive that could write outside its folder")
            # tarfile's own "data" filter as well, where this Python has it (3.11.4+).
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, members=members, **extra)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise PipelineError(f"{label}: not a complete tar.gz archive ({type(exc).__name__}: {exc}); "
                            "a truncated or corrupt download?") from None
    missing = [name for name in CIFAR_FILES if not (dest / CIFAR_DIR / name).is_file()]
    if missing:
        raise PipelineError(f"{label}: not the CIFAR-10 python archive: no {CIFAR_DIR}/{missing[0]} in it")


def fetch_cifar10(cfg: ClassifierData, dest: Path, scratch: Path) -> None:
    archive = scratch / PurePosixPath(cfg.cifar10_url).name
    log.info("downloading %s", cfg.cifar10_url)
    download(cfg.cifar10_url, archive, cfg.cifar10_md5)
    safe_extract(archive, dest, f"{archive.name} from {cfg.cifar10_url}")
    write_json(dest / SOURCE_JSON, {"name": "cifar10", "url": cfg.cifar10_url, "md5": cfg.cifar10_md5})


def fetch(cfg: ClassifierData, out_dir: Path) -> None:
    """Fill ``out_dir`` with the chosen dataset; on any failure it is left as it was."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # The download goes beside the output (same disk), never into the output itself.
    with atomic_dir(out_dir) as staging, tempfile.TemporaryDirectory(prefix=".download.", dir=out_dir.parent) as tmp:
        if cfg.name == "digits":
            fetch_digits(staging)
        else:
            fetch_cifar10(cfg, staging, Path(tmp))
