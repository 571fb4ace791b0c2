"""The one exception type a user sees: a clear message, no traceback."""

from __future__ import annotations

import errno
import os


class PipelineError(Exception):
    """Bad input (params, data files, weights) or a run that cannot go on.

    The message names the key or the file and says what was expected. The CLI
    prints it on one line and exits with status 2.
    """


EXCERPT_CHARS = 80  # the longest quote of a value a message holds


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` cut to ``limit`` characters, '...' at the end: a message quotes the start
    of a value (a key, a cell, a member name), never a megabyte of it."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def size_text(size: int) -> str:
    """A byte count as a message gives it: ``1.5 GiB (1610612736 bytes)``."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            return f"{size / (1 << shift):.1f} {unit} ({size} bytes)"
    return f"{size} bytes"


# What to do when the system refuses a read or a write, by errno; these are the refusals a
# stage's files meet (a full or read-only disk, permissions, limits), named in words.
REMEDIES = {
    errno.ENOSPC: "free space on that disk (or run where there is more), then rerun",
    errno.EDQUOT: "free space within your disk quota, then rerun",
    errno.EFBIG: "a file size limit was reached (ulimit -f, or the file system's largest file): raise it, then rerun",
    errno.EACCES: "give this user access to it and to its folder (or work in a copy of your own), then rerun",
    errno.EPERM: "give this user access to it and to its folder (or work in a copy of your own), then rerun",
    errno.EROFS: "remount that disk writable, or work in a copy on another disk, then rerun",
    errno.EMFILE: "raise the limit of open files (ulimit -n), then rerun",
    errno.ENFILE: "the system has too many open files: end other programs or raise fs.file-max, then rerun",
    errno.EIO: "the disk (or network file system) failed: check it, then rerun",
}
DEFAULT_REMEDY = "fix that, then rerun"


def os_error_line(path, code: int) -> str:
    """``<path>: <cause in words> (<errno name>); <what to do>``; no ``path``: the cause alone."""
    cause = os.strerror(code)
    cause = cause[:1].lower() + cause[1:]  # "No space left on device" -> "no space left on device"
    where = f"{os.fsdecode(path)}: " if path is not None else ""
    return f"{where}{cause} ({errno.errorcode.get(code, code)}); {REMEDIES.get(code, DEFAULT_REMEDY)}"


class FileRefused(PipelineError):
    """The system refused a write (or a read) of ``path`` with errno ``code``: a full disk, a
    read-only folder, a limit. Written where the refused file's real name is known (an atomic
    write knows its target; the system names only the temporary file, or, inside torch.save,
    nothing)."""

    def __init__(self, path, code: int):
        self.path, self.code = path, code
        super().__init__(os_error_line(path, code))
