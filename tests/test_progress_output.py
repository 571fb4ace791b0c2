"""What a person reads while a stage trains: in a terminal a progress bar with the log lines
written above it, never on the same line; in a file or a pipe (DVC's and Snakemake's logs)
no bar and one line per epoch. The real training loop runs in a subprocess, once under a
pseudo-terminal (80 columns) and once with its output piped."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

EPOCHS = 4
SCRIPT = f"""
import logging, torch
from dlpipe.data.loaders import TensorLoader
from dlpipe.training import loop
from dlpipe.training.state import RunFiles
from dlpipe.training.tasks import classification
from dlpipe.__main__ import LOG_FORMAT
logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
torch.manual_seed(0)
x = torch.randn(64, 4)
y = (x[:, 0] > 0).long()
model = torch.nn.Linear(4, 2)
loop.fit(model, TensorLoader(x, y, 16, shuffle=True, seed=0), TensorLoader(x, y, 64), classification(),
         loop.Optimization(torch.optim.SGD(model.parameters(), lr=0.1)), loop.Stopping({EPOCHS}), RunFiles("demo"))
"""
BAR = re.compile(r"\d+%\|")  # tqdm's "  25%|██▌  |"
LOG = re.compile(r" INFO ")


def screen_lines(text: str) -> list[str]:
    """The lines a terminal shows: a carriage return moves back to the line's start and the
    characters after it overwrite those before."""
    lines = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        line: list[str] = []
        column = 0
        for part_index, part in enumerate(raw.split("\r")):
            if part_index:
                column = 0
            for char in part:
                if column < len(line):
                    line[column] = char
                else:
                    line.append(char)
                column += 1
        lines.append("".join(line).rstrip())
    return [line for line in lines if line]


def mashed(lines: list[str]) -> list[str]:
    return [line for line in lines if BAR.search(line) and LOG.search(line)]


def under_terminal(columns: int = 80) -> str:
    primary, secondary = pty.openpty()
    # A pseudo-terminal starts 0 columns wide, where tqdm draws an empty bar.
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdin=secondary, stdout=secondary, stderr=secondary,
                            close_fds=True)
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(primary)
    assert proc.wait(timeout=120) == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode()


def test_the_checker_sees_a_bar_and_a_log_line_on_one_line():
    """Output as it was before the log lines went through tqdm: the bar, then a log line
    written where the bar ended."""
    before = ("\rtrain_dcgan:   6%|▋         | 7/110 [00:19<04:44,  2.76s/epoch]2026-12-02 05:11:15,142 "
              "dlpipe.training.gan INFO train_dcgan epoch 8/110 loss_d 1.0126\n")
    assert mashed(screen_lines(before)) != []


def test_in_a_terminal_the_bar_and_the_log_lines_never_share_a_line():
    lines = screen_lines(under_terminal())
    assert any(BAR.search(line) for line in lines), lines  # a bar was drawn
    assert mashed(lines) == [], mashed(lines)
    logged = [line for line in lines if LOG.search(line)]
    assert [re.search(r"epoch (\d+)/", line).group(1) for line in logged] == [str(e) for e in range(1, EPOCHS + 1)]


def test_in_a_pipe_there_is_no_bar_and_one_line_per_epoch():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\r" not in proc.stderr and not BAR.search(proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == EPOCHS and all(f"demo epoch {e}/{EPOCHS} " in line for e, line in enumerate(lines, 1))
