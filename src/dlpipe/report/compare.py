"""Where the results come from, and what they were one commit earlier: git and DVC.

The previous values come from DVC itself (``dvc metrics diff <rev> --all --json``,
``dvc params diff <rev> --json``), so the page agrees with what a user types.
Inside ``dvc repro`` the workspace holds the new metrics and HEAD the previous
commit's. Once those results are committed (a rerun of the report after
``git commit``), the workspace equals HEAD and the comparison moves one commit
back, to HEAD~1: the page stays the same before and after the commit. Without
git or without an earlier commit, the page shows the values alone and says why;
a metrics file the baseline commit lacks (the metrics are tracked by git, so
this means it was not committed there) is named with the reason.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
TIMEOUT_S = 300


@dataclass(frozen=True)
class Commit:
    sha: str
    short: str
    subject: str
    date: str  # committer date, ISO 8601
    dirty: tuple[str, ...]  # tracked files with uncommitted changes


@dataclass(frozen=True)
class Change:
    old: float | None
    new: float | None

    @property
    def diff(self) -> float | None:
        if self.old is None or self.new is None:
            return None
        return self.new - self.old


@dataclass
class Comparison:
    """Previous values of every metric: ``metrics[file][key] -> Change``."""

    baseline: str | None = None  # the git revision compared against, e.g. HEAD or HEAD~1
    baseline_commit: Commit | None = None
    metrics: dict[str, dict[str, Change]] = field(default_factory=dict)
    params: dict[str, dict[str, tuple]] = field(default_factory=dict)  # file -> dotted key -> (old, new)
    note: str = ""  # why there is no comparison, or how the baseline was chosen
    missing: dict[str, str] = field(default_factory=dict)  # metrics file -> why it has no earlier values

    def old(self, path: str, key: str) -> float | None:
        change = self.metrics.get(path, {}).get(key)
        return change.old if change else None


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.rstrip("\n") if proc.returncode == 0 else None


def commit_info(root: Path, rev: str = "HEAD") -> Commit | None:
    out = _git(root, "log", "-1", "--format=%H%x00%h%x00%s%x00%cI", rev, "--")
    if not out:
        return None
    sha, short, subject, date = out.split("\0")
    dirty: tuple[str, ...] = ()
    if rev == "HEAD":
        status = _git(root, "status", "--porcelain", "--untracked-files=no") or ""
        dirty = tuple(sorted(line[3:] for line in status.splitlines() if line.strip()))
    return Commit(sha, short, subject, date, dirty)


def _dvc_json(root: Path, *args: str) -> tuple[dict | None, str]:
    """Run ``dvc <args> --json`` with this interpreter's DVC; (parsed stdout, error text)."""
    cmd = [sys.executable, "-m", "dvc", *args, "--json"]
    try:
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, str(exc)
    error = " ".join(line.removeprefix("ERROR: ") for line in proc.stderr.splitlines() if "ERROR" in line)
    if proc.returncode != 0:
        return None, error or f"exit status {proc.returncode}"
    out = proc.stdout
    try:
        return (json.loads(out[out.index("{"):out.rindex("}") + 1]) if "{" in out else {}), error
    except ValueError:
        return None, f"unreadable output of {' '.join(args)}"


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _changes(diff: dict) -> dict[str, dict[str, Change]]:
    """DVC's ``{file: {key: {old, new, diff}}}`` as Changes, numbers only."""
    result: dict[str, dict[str, Change]] = {}
    for path, keys in (diff or {}).items():
        if not isinstance(keys, dict):
            continue
        for key, entry in keys.items():
            if isinstance(entry, dict):
                result.setdefault(path, {})[key] = Change(_number(entry.get("old")), _number(entry.get("new")))
    return result


def why_missing(root: Path, rev: str, path: str) -> str:
    """Why ``rev`` has no values of the metrics file ``path``, in words."""
    short = _git(root, "rev-parse", "--short", rev) or rev
    if _git(root, "cat-file", "-e", f"{rev}:{path}") is None:
        if _git(root, "cat-file", "-e", f"{rev}:dvc.lock") is None:
            return f"{rev} ({short}) has no dvc.lock: the pipeline had not been run and committed there"
        return (f"{rev} ({short}) does not hold {path}: its stage was not in that commit's pipeline, "
                "or its results were not committed (`git add` the metrics after `dvc repro`)")
    return f"{rev} ({short}) holds {path}, but DVC could not read a number from it"


def compare(root: Path = Path(".")) -> tuple[Commit | None, Comparison]:
    """The commit the workspace is on, and its metrics and params against the baseline."""
    head = commit_info(root)
    if head is None:
        reason = "not a git repository" if _git(root, "rev-parse", "--git-dir") is None else "no commit yet"
        return None, Comparison(note=f"No earlier values: {reason}.")

    diff, error = _dvc_json(root, "metrics", "diff", "HEAD", "--all")
    if diff is None:
        return head, Comparison(note=f"No earlier values: dvc metrics diff HEAD failed: {error}.")
    baseline, metrics = "HEAD", _changes(diff)
    note = ""
    same_as_head = bool(metrics) and all(
        c.old is not None and c.old == c.new for keys in metrics.values() for c in keys.values())
    if same_as_head:
        parent = commit_info(root, "HEAD~1")
        if parent is None:
            note = "These are HEAD's own results and HEAD has no parent commit: nothing earlier to compare with."
        else:
            earlier, error = _dvc_json(root, "metrics", "diff", "HEAD~1", "--all")
            if earlier is not None:
                baseline, metrics = "HEAD~1", _changes(earlier)
                note = ("The workspace's metrics are HEAD's (already committed), so they are compared "
                        "with the commit before it.")
            else:
                note = f"dvc metrics diff HEAD~1 failed ({error}); compared with HEAD."
    params, _ = _dvc_json(root, "params", "diff", baseline)
    changed = {path: {key: (entry.get("old"), entry.get("new")) for key, entry in keys.items() if isinstance(entry, dict)}
               for path, keys in (params or {}).items() if isinstance(keys, dict)}
    comparison = Comparison(baseline, commit_info(root, baseline), metrics, changed, note)
    # sorted: DVC's JSON lists the files in no fixed order, and the page is made byte for byte
    comparison.missing = {path: why_missing(root, baseline, path) for path, keys in sorted(metrics.items())
                          if keys and all(c.old is None for c in keys.values())}
    if not any(c.old is not None for keys in metrics.values() for c in keys.values()):
        comparison.note = f"{baseline} has no metrics DVC can read; values are shown alone."
    log.info("report baseline: %s (%s)", baseline, comparison.note or "workspace vs baseline")
    return head, comparison
