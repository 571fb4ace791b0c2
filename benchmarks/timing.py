"""What every comparison of the benchmark shares: both sides timed in the same
process, alternating, several repeats, medians and their ratio; the machine
description; params variants that go through the pipeline's own loader and
schema; the printed table.

Absolute seconds on a shared machine are noise; a ratio of two medians taken
in alternation is the figure (load that comes and goes hits both sides alike).
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import yaml

Side = Callable[[], object]


def alternate(sides: dict[str, Side], repeats: int, warmup: int = 1,
              clock: Callable[[], float] = time.perf_counter,
              seconds_of: Callable[[object], float] | None = None,
              results: dict[str, list] | None = None) -> dict[str, list[float]]:
    """Seconds of each side over ``repeats`` rounds after ``warmup`` untimed rounds.

    Each round runs every side once; the order is reversed every other round
    (A B, B A, A B, ...) so neither side always runs first or second. A side's
    time is the wall clock around its call, or ``seconds_of(its return value)``
    when given (a side that times its own part). ``results`` collects the timed
    rounds' return values per side.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        order = names if round_ % 2 == 0 else names[::-1]
        for name in order:
            start = clock()
            value = sides[name]()
            elapsed = clock() - start
            if round_ >= warmup:
                times[name].append(seconds_of(value) if seconds_of else elapsed)
                if results is not None:
                    results.setdefault(name, []).append(value)
    return times


def quiet(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with its stderr (progress bars) swallowed."""
    def run():
        with contextlib.redirect_stderr(io.StringIO()):
            return fn()
    return run


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in times.items()}


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, None when the denominator is not positive."""
    return numerator / denominator if denominator > 0 else None


def compare(times: dict[str, list[float]], numerator: str, denominator: str) -> dict:
    """The record every comparison writes: the runs, the medians, their ratio."""
    mid = medians(times)
    return {"runs_s": times, "median_s": mid, "ratio": ratio(mid[numerator], mid[denominator]),
            "ratio_is": f"{numerator} / {denominator}"}


def units_per_sample(warm_seconds: float, target_seconds: float, cap: int = 1000) -> int:
    """How many units (epochs, steps) one timed sample should hold so that it lasts
    about ``target_seconds``: short samples are dominated by timer and scheduler noise."""
    if warm_seconds <= 0:
        return cap
    return max(1, min(cap, round(target_seconds / warm_seconds)))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> dict:
    import torch

    info = {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "device": device,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# --------------------------------------------------------------------------- params variants


def set_key(raw: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[last] = value  # a key the schema does not know is refused by load_params


def override_raw(raw: dict, overrides: dict) -> dict:
    """A deep copy of params ``raw`` with dotted ``overrides`` set."""
    copy = yaml.safe_load(yaml.safe_dump(raw))
    for key, value in overrides.items():
        set_key(copy, key, value)
    return copy


def variant_params(overrides: dict, params_path: str | Path = "params.yaml"):
    """The pipeline's Params for params.yaml with ``overrides``: written as a params file
    and read by ``load_params``, as a stage would read it."""
    from dlpipe.config import load_params

    params_path = Path(params_path)
    raw = override_raw(yaml.safe_load(params_path.read_text()), overrides)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return load_params(path)


# --------------------------------------------------------------------------- output


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 10 else f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "(none)"
    return str(value)


def table(rows: list[tuple], header: tuple = ("figure", "value", "bar", "met")) -> str:
    """Plain-text table: one row per figure, columns padded to their widest cell."""
    cells = [tuple(fmt(c) for c in header)] + [tuple(fmt(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
