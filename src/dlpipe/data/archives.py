"""Downloads and archives from the network: a streamed download with its length and
md5 checked, a stall timeout and an overall deadline, and tar / zip extraction that
checks every member before anything is written (no absolute paths, no '..', no links
or devices, no member or archive larger than the caps). Every error is one
``PipelineError`` line naming the URL or the archive and the params key."""

from __future__ import annotations

import hashlib
import http.client
import shutil
import socket
import stat
import tarfile
import threading
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from dlpipe.errors import PipelineError, excerpt, size_text

CHUNK = 1 << 20  # bytes per read
# The bounds (a stall timeout and a deadline per download, caps on what an archive unpacks
# to) are params.yaml's ``downloads`` section, passed in as ``limits`` (config.Downloads).


def unsafe_member_path(name: str) -> str | None:
    """Why an archive member called ``name`` would land outside its target folder, or None."""
    name = name.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or (parts and len(parts[0]) == 2 and parts[0][1] == ":"):  # /x, C:
        return "an absolute path"
    if ".." in parts:
        return "a '..' component"
    return None


class SizeBudget:
    """The caps on what one archive may write: each member's size (as the archive
    declares it, before it is read) is added here first, and refused beyond a cap."""

    def __init__(self, label: str, limits):
        self.label, self.total = label, 0
        self.max_member, self.max_archive = limits.max_member_mib << 20, limits.max_archive_mib << 20

    def add(self, name: str, size: int) -> None:
        if size > self.max_member:
            raise PipelineError(f"{self.label}: member {excerpt(repr(name))} is {size_text(size)} once extracted, "
                                f"over the cap of {size_text(self.max_member)} for one member "
                                "(params 'downloads.max_member_mib'); refusing to extract it (an archive bomb, "
                                "or not the dataset?)")
        self.total += size
        if self.total > self.max_archive:
            raise PipelineError(f"{self.label}: the members up to {excerpt(repr(name))} add up to "
                                f"{size_text(self.total)} once extracted, over the cap of "
                                f"{size_text(self.max_archive)} for one archive (params "
                                "'downloads.max_archive_mib'); refusing to extract it")


class _Watchdog:
    """Ends a download at its deadline: shuts down every socket it opened, so that a
    read blocked on a trickling server returns at once."""

    def __init__(self, deadline_s: float):
        self.expired, self.sockets, self.lock = False, [], threading.Lock()
        self.timer = threading.Timer(deadline_s, self.expire)
        self.timer.daemon = True

    def expire(self) -> None:
        with self.lock:
            self.expired = True
            for sock in self.sockets:
                self._shut(sock)

    def watch(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.append(sock)
            if self.expired:
                self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: under TLS too
        except OSError:
            pass

    def opener(self) -> urllib.request.OpenerDirector:
        """urllib's opener (proxies, redirects, https), its connections watched."""
        watchdog = self

        def watched(base):
            class Connection(base):
                def connect(self):
                    super().connect()
                    watchdog.watch(self.sock)
            return Connection

        http_class, https_class = watched(http.client.HTTPConnection), watched(http.client.HTTPSConnection)

        class HTTPHandler(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(http_class, req)

        class HTTPSHandler(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(https_class, req)

        return urllib.request.build_opener(HTTPHandler, HTTPSHandler)


def download(url: str, dest: Path, expected_md5: str, url_key: str, md5_key: str, limits) -> str:
    """Stream ``url`` to ``dest``, checking the length the server announced and the md5
    (skipped when ``expected_md5`` is empty); returns the md5. A download that sends
    nothing for ``limits.stall_s`` or is not done within ``limits.deadline_s`` seconds
    is given up; on any failure ``dest`` is removed. Errors name the params keys."""
    stall_s, deadline_s = limits.stall_s, limits.deadline_s
    watchdog = _Watchdog(deadline_s)
    watchdog.timer.start()
    try:
        return _download(url, dest, expected_md5, url_key, md5_key, stall_s, deadline_s, watchdog)
    except BaseException:  # a failure, Ctrl-C, SIGTERM (see dlpipe.signals.sigterm_unwinds): no partial file
        dest.unlink(missing_ok=True)
        raise
    finally:
        watchdog.timer.cancel()


def _download(url, dest, expected_md5, url_key, md5_key, stall_s, deadline_s, watchdog) -> str:
    where = f"(params '{url_key}')"
    late = f"did not finish within its deadline of {deadline_s:g} s"
    try:
        response = watchdog.opener().open(url, timeout=stall_s)
    except urllib.error.HTTPError as exc:
        raise PipelineError(f"could not download {url}: HTTP {exc.code} {exc.reason} {where}") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if watchdog.expired:
            reason = f"no answer: the download {late}"
        elif isinstance(reason, TimeoutError):
            reason = f"no answer within {stall_s:g} s"
        raise PipelineError(f"could not download {url}: {reason} {where}") from None
    digest, received = hashlib.md5(), 0
    announced = response.headers.get("Content-Length")
    total = int(announced) if announced and announced.isdigit() else None
    try:
        with response, open(dest, "wb") as out, tqdm(total=total, unit="B", unit_scale=True,
                                                     desc=PurePosixPath(url).name, mininterval=1.0) as bar:
            # read1: what one read of the socket brings, so that a stall counts the bytes before it.
            while not watchdog.expired and (block := response.read1(CHUNK)):
                out.write(block)
                digest.update(block)
                received += len(block)
                bar.update(len(block))
    except (OSError, http.client.HTTPException) as exc:
        if not watchdog.expired:
            if isinstance(exc, TimeoutError):
                raise PipelineError(f"download of {url} stalled: no data for {stall_s:g} s after {received} "
                                    f"bytes {where}") from None
            raise PipelineError(f"download of {url} broke off after {received} bytes: {exc}") from None
    if watchdog.expired:
        raise PipelineError(f"download of {url} {late}: {received} bytes"
                            f"{f' of {total}' if total is not None else ''} had arrived {where}")
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


def safe_extract_tar(archive: Path, dest: Path, label: str, limits) -> None:
    """Check every member first, then extract; any problem names the archive and member."""
    budget = SizeBudget(label, limits)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = []
            # Header by header to the end (a truncated archive fails here): a member over
            # the caps is refused as soon as its header is read, before its data is.
            while (member := tar.next()) is not None:
                reason = unsafe_tar_reason(member)
                if reason:
                    raise PipelineError(f"{label}: member {excerpt(repr(member.name))} has {reason}; "
                                        "refusing to extract an archive that could write outside its folder")
                budget.add(member.name, member.size)
                members.append(member)
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


def safe_extract_zip(archive: Path, dest: Path, label: str, limits) -> None:
    """Check every member first, then extract each one, refusing any that
    would land outside ``dest``; any problem names the archive and the member."""
    root = dest.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            budget = SizeBudget(label, limits)
            for info in members:
                reason = unsafe_zip_reason(info)
                if reason:
                    raise PipelineError(f"{label}: member {excerpt(repr(info.filename))} has {reason}; "
                                        "refusing to extract an archive that could write outside its folder")
                # zipfile stops reading a member at the size its directory declares (and then
                # checks the CRC): the declared size bounds what is written.
                budget.add(info.filename, info.file_size)
            for info in members:
                target = (dest / info.filename.replace("\\", "/")).resolve()
                if root not in target.parents and target != root:
                    raise PipelineError(f"{label}: member {excerpt(repr(info.filename))} would land outside {dest}; "
                                        "refused")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise PipelineError(f"{label}: not a complete zip archive ({type(exc).__name__}: {exc}); "
                            "a truncated or corrupt download?") from None
