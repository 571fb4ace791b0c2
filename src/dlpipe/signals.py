"""Signals around the work that must finish whole: SIGTERM turned into an unwinding exit
(every ``finally`` runs, temporary files go), and Ctrl-C held off while a checkpoint or a
stage's set of outputs is being written (``dlpipe.io``, ``dlpipe.training.checkpoint``)."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """SIGTERM (``kill``, an engine cancelling a job) raises SystemExit(143) in the main
    thread while this block runs, so that every ``finally`` runs and temporary files go;
    its default action ends the process on the spot. Elsewhere, or where another handler
    is installed, nothing changes."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def unwind(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


# Whether a sigint_deferred block is open (a nested one leaves the outer one's handlers).
_HOLDING = False


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Ctrl-C (SIGINT), and SIGTERM where a Python handler takes it (``sigterm_unwinds``),
    wait until this block is done, then act as they would have: a checkpoint being written,
    or a set of renames, is finished whole first. Off the main thread, where a signal is
    ignored or left to its default action, or nested, nothing changes."""
    global _HOLDING
    if _HOLDING or threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    handlers = {signum: handler for signum, handler in handlers.items() if callable(handler)}
    for signum in handlers:
        signal.signal(signum, lambda signum, frame: held.append(signum))
    _HOLDING = True
    try:
        yield
    finally:
        _HOLDING = False
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(held):
            handlers[signum](signum, None)  # default_int_handler raises KeyboardInterrupt here
