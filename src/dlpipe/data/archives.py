"""Downloads and archives from the network: a streamed download with its length and
md5 checked, and tar / zip extraction that checks every member before anything
is written (no absolute paths, no '..', no links or devices). Every error is one
``PipelineError`` line naming the URL or the archive and the params key."""

from __future__ import annotations

import hashlib
import http.client
import shutil
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from dlpipe.errors import PipelineError

TIMEOUT_S = 60  # per socket operation
CHUNK = 1 << 20  # bytes per read


def unsafe_member_path(name: str) -> str | None:
    """Why an archive member called ``name`` would land outside its target folder, or None."""
    name = name.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or (parts and len(parts[0]) == 2 and parts[0][1] == ":"):  # /x, C:
        return "an absolute path"
    if ".." in parts:
        return "a '..' component"
    return None


def download(url: str, dest: Path, expected_md5: str, url_key: str, md5_key: str) -> str:
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


def unsafe_tar_reason(member: tarfile.TarInfo) -> str | None:
    """Why extracting ``member`` could write outside the target folder, or None."""
    if reason := unsafe_member_path(member.name):
        return reason
    if member.issym() or member.islnk():
        return "a link"
    if not (member.isfile() or member.isdir()):
        return "a device, fifo or other special file"
    return None


def safe_extract_tar(archive: Path, dest: Path, label: str) -> None:
    """Check every member first, then extract; any problem names the archive and member."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()  # reads to the end: a truncated archive fails here
            for member in members:
                reason = unsafe_tar_reason(member)
                if reason:
                    raise PipelineError(f"{label}: member {member.name!r} has {reason}; "
                                        "refusing to extract an archive that could write outside its folder")
            # tarfile's own "data" filter as well, where this Python has it (3.11.4+).
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, members=members, **extra)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise PipelineError(f"{label}: not a complete tar.gz archive ({type(exc).__name__}: {exc}); "
                            "a truncated or corrupt download?") from None


def unsafe_zip_reason(info: zipfile.ZipInfo) -> str | None:
    """Why extracting ``info`` could write outside the target folder, or None."""
    if reason := unsafe_member_path(info.filename):
        return reason
    # Unix file type bits, where the archiver recorded them (0: none recorded, a plain file).
    file_type = stat.S_IFMT(info.external_attr >> 16)
    if file_type == stat.S_IFLNK:
        return "a link"
    if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "a device, fifo or other special file"
    return None


def safe_extract_zip(archive: Path, dest: Path, label: str) -> None:
    """Check every member first, then extract each one, refusing any that
    would land outside ``dest``; any problem names the archive and the member."""
    root = dest.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                reason = unsafe_zip_reason(info)
                if reason:
                    raise PipelineError(f"{label}: member {info.filename!r} has {reason}; "
                                        "refusing to extract an archive that could write outside its folder")
            for info in members:
                target = (dest / info.filename.replace("\\", "/")).resolve()
                if root not in target.parents and target != root:
                    raise PipelineError(f"{label}: member {info.filename!r} would land outside {dest}; refused")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise PipelineError(f"{label}: not a complete zip archive ({type(exc).__name__}: {exc}); "
                            "a truncated or corrupt download?") from None
