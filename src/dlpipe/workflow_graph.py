"""dvc.yaml as plain stage records, for the Snakemake adapter (workflow/rules/dvc_stages.smk).

dvc.yaml is the one stage graph; Snakemake builds one rule per stage from these
records, so both engines plan the same jobs (tests/test_engines_graph.py).

Directory convention: a dep or out path whose last component has no file
suffix (``data/raw/houses``, ``src/dlpipe/training``) is a directory; one with
a suffix (``models/houses.pt``) is a file. Snakemake needs to know this before
anything exists (outputs that are directories must be wrapped in
``directory()``), so name directories without dots and files with a suffix.

Nothing here reads files at import time; every function takes what it needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from dlpipe.errors import PipelineError

# Stage keys the adapter cannot express as one plain rule; refusing them beats
# a Snakemake graph that silently differs from DVC's.
_UNSUPPORTED = ("wdir", "foreach", "matrix", "do")


@dataclass(frozen=True)
class Stage:
    name: str
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]  # outs + metrics + plots, persisted outs left out
    params: tuple[str, ...]  # dotted keys into params.yaml
    resources: dict = field(default_factory=dict)  # meta.resources: mem_mb, runtime (minutes), gpu
    desc: str = ""  # what the stage does, in words (dvc.yaml's desc)


def is_directory(path: str) -> bool:
    """The naming convention above: no suffix (or a trailing slash) = directory."""
    return path.endswith("/") or PurePosixPath(path).suffix == ""


def _entry(item: str | dict) -> tuple[str, dict]:
    """A dvc.yaml list entry is ``path`` or ``{path: {options}}``."""
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict) and len(item) == 1:
        (path, options), = item.items()
        return str(path), dict(options or {})
    raise PipelineError(f"dvc.yaml: cannot read entry {item!r}; expected a path or {{path: {{options}}}}")


def _outputs(spec: dict) -> list[str]:
    # Snakemake deletes a job's outputs before it runs it: a persisted out (a
    # resumable checkpoint folder) is a cache the stage must find, not a product.
    paths = []
    for section in ("outs", "metrics", "plots"):
        for item in spec.get(section) or []:
            path, options = _entry(item)
            if not options.get("persist", False):
                paths.append(path)
    return paths


def _param_keys(name: str, items: list) -> list[str]:
    keys = []
    for item in items or []:
        if isinstance(item, str):
            keys.append(item)
        elif isinstance(item, dict) and set(item) == {"params.yaml"}:
            keys.extend(item["params.yaml"] or [])
        else:
            # Snakemake's config is params.yaml alone; other params files would go unseen.
            raise PipelineError(f"dvc.yaml: stage '{name}': params {item!r}: only keys of params.yaml are supported")
    return keys


def stages_from_dvc(dvc_yaml: dict) -> list[Stage]:
    """Stage records from a parsed dvc.yaml, in file order."""
    stages = []
    for name, spec in (dvc_yaml.get("stages") or {}).items():
        unsupported = [key for key in _UNSUPPORTED if key in spec]
        if unsupported:
            raise PipelineError(f"dvc.yaml: stage '{name}': {', '.join(unsupported)} not supported by the Snakemake adapter")
        # DVC runs a list of commands one after another, stopping at the first failure.
        cmd = " && ".join(spec["cmd"]) if isinstance(spec["cmd"], list) else str(spec["cmd"])
        deps = tuple(_entry(item)[0] for item in spec.get("deps") or [])
        resources = dict((spec.get("meta") or {}).get("resources") or {})
        stages.append(Stage(name, cmd, deps, tuple(_outputs(spec)), tuple(_param_keys(name, spec.get("params"))),
                            resources, str(spec.get("desc", ""))))
    return stages


def load_stages(path: str | Path = "dvc.yaml") -> list[Stage]:
    if not Path(path).is_file():
        raise PipelineError(f"stage graph not found: {path}")
    return stages_from_dvc(yaml.safe_load(Path(path).read_text()) or {})


def resolve_params(keys: tuple[str, ...] | list[str], config: dict) -> dict[str, str]:
    """{dotted key: value as canonical JSON}; the JSON text lets Snakemake compare runs."""
    resolved = {}
    for key in keys:
        node = config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise PipelineError(f"params.yaml: key '{key}' named in dvc.yaml not found (no '{part}')")
            node = node[part]
        resolved[key] = json.dumps(node, sort_keys=True)
    return resolved


def stage_threads(config: dict, stage: str, source: str = "params.yaml") -> int:
    """Torch threads of ``stage``: params.yaml's ``threads.<stage>``, the one
    declaration that ``python -m dlpipe`` applies and the Snakefile turns into
    the rule's ``threads`` (so both engines run a stage on the same count)."""
    declared = config.get("threads")
    if not isinstance(declared, dict) or stage not in declared:
        raise PipelineError(f"{source}: 'threads.{stage}' not found; expected the torch thread count of stage "
                            f"{stage} (an integer from 1 to 1024)")
    count = declared[stage]
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1024:
        raise PipelineError(f"{source}: 'threads.{stage}': {str(count)[:40]!r}; expected an integer from 1 to 1024")
    return count


def check_thread_keys(config: dict, stage_names: list[str], source: str = "params.yaml") -> None:
    """A ``threads`` entry that names no stage is a typo that would silently do nothing."""
    unknown = sorted(set(config.get("threads") or {}) - set(stage_names))
    if unknown:
        raise PipelineError(f"{source}: unknown key 'threads.{unknown[0]}'; expected a stage name "
                            f"(one of: {', '.join(stage_names)})")


def job_params_file(config: dict, params_path: str | Path = "params.yaml",
                    folder: str | Path = ".snakemake/dlpipe") -> str | None:
    """The params file a Snakemake job's stage reads. None (the stage reads params.yaml)
    when Snakemake's config is params.yaml's content; otherwise, after ``--config`` or
    ``--configfile``, that config written to ``<folder>/params-<sha256 prefix>.yaml``,
    so that the values the rule records are the values the stage runs with."""
    from dlpipe.io import write_text

    on_disk = yaml.safe_load(Path(params_path).read_text()) if Path(params_path).is_file() else None
    if on_disk == config:
        return None
    text = yaml.safe_dump(config, sort_keys=False)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = Path(folder) / f"params-{digest}.yaml"
    if not path.is_file() or path.read_text() != text:  # a content name: every job agrees on it
        write_text(path, text)
    return path.as_posix()


def rule_inputs(stage: Stage, produced: dict[str, str], root: str | Path = ".") -> list[str]:
    """A stage's deps as Snakemake inputs. A source folder (not another stage's output)
    is listed file by file: Snakemake sees only a folder's own mtime, which editing
    a file inside does not change."""
    files = []
    for dep in stage.deps:
        if is_directory(dep) and dep not in produced:
            files.extend(source_files(dep, root))
        else:
            files.append(dep)
    return files


def clamp_future_mtimes(paths, now: float | None = None) -> list[str]:
    """Set every file (or folder, and a folder's ``.snakemake_timestamp``) of ``paths``
    whose modification time lies in the future to ``now``; returns what was set.

    After a job, Snakemake refuses outputs older than the job's newest input ("clock
    skew") and deletes them, and has no setting to decide by content instead. An input
    dated in the future (copied from a machine whose clock runs ahead, shared storage
    whose server's does) would make every run of its jobs fail that way, finished work
    lost each time. Brought back to the present before any job starts, every output a
    job writes is newer. Only the time moves, never the contents (which DVC hashes)."""
    now = time.time() if now is None else now
    clamped = []
    for path in paths:
        for item in (Path(path), Path(path) / ".snakemake_timestamp"):
            try:
                stat = item.stat()
            except OSError:  # missing (not built yet), or no folder
                continue
            if stat.st_mtime > now:
                os.utime(item, (min(stat.st_atime, now), now))
                clamped.append(str(item))
    return clamped


MODEL_SECTIONS = ("houses", "lenet", "transfer", "dcgan")


def model_section(params_keys) -> str:
    """The model whose params section a stage's keys name (each stage reads at most one), or ""."""
    sections = [key.split(".")[0] for key in params_keys if key.split(".")[0] in MODEL_SECTIONS]
    return sections[0] if sections else ""


def report_category(stage: Stage) -> str:
    """The section of Snakemake's report a stage's results go to: its model, else its own name."""
    return model_section(stage.params) or stage.name


def in_report(path: str) -> bool:
    """Outputs `snakemake --report` shows: metrics files, pictures and the HTML report."""
    return path.startswith("reports/metrics/") or PurePosixPath(path).suffix in (".png", ".html")


def produced_by(stages: list[Stage]) -> dict[str, str]:
    """{output path: stage name}: the edges of the graph run from these."""
    return {out: stage.name for stage in stages for out in stage.outs}


def source_files(path: str, root: str | Path = ".") -> list[str]:
    """The files under a source directory dep, for Snakemake's mtime check.

    Snakemake compares a directory input by the folder's own mtime, which does
    not change when a file inside is edited in place; DVC hashes the contents.
    Listing the files keeps the two engines' idea of "changed" close.
    """
    base = Path(root)
    found = sorted(
        p.relative_to(base).as_posix()
        for p in (base / path).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )
    return found or [path]
