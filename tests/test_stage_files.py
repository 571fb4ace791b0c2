"""Generated corruptions of every file one stage hands to another, through the real entry
point, on a finished pipeline run.

The files are those of a copy of conftest's tiny run (``tiny_dvc_run``) that a layout
declares (``dlpipe.layouts``: found by its pattern), the weights under models/ (checked
against the model that loads them) and the training checkpoints. The stages that read a
file are those whose dvc.yaml deps hold it; the stage that writes it, the one whose outs
hold it. Corruptions are generated from what the file is, not listed by hand: for a
tensor file, each declared tensor removed, of another dtype, of another size, empty,
holding a NaN, below its minimum, repeated where it must be unique, and the file cut in
half, random bytes, not a dict, an unknown key; for a JSON record, each required key
(one level down too) removed, of the wrong type, NaN, negative, and the document cut,
not JSON, a list; for a table, each column removed, a text cell in a number column,
no rows, no header.

The contract, for every case:

- a file another stage wrote: exit status 2, one ``error:`` line (the last line, no
  traceback) naming the file and, for a declared layout, ``rerun <the stage that writes
  it>``; every output byte-identical (the sha256 of every file under the output folders
  and of dvc.lock, as tests/test_bad_input.py takes it);
- a checkpoint: exit status 0, the file set aside as ``<name>.malformed`` with a warning,
  and training run afresh to its last epoch; everything else restored afterwards.

``DLPIPE_FILE_MATCH`` (comma-separated) keeps only the files whose path holds one part.
``DLPIPE_FILE_SEED`` (default 0) seeds the choice and the random bytes; the default
suite runs one drawn case per file (of two of the checkpoints only: each retrains its
stage), ``DLPIPE_FILE_CASES=N`` draws N, and the slow test (``make test-slow``) runs
every case.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import math
import os
import random
import shutil
import sys
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Callable

import pytest
import torch

from conftest import REPO, clone_run
from dlpipe import layouts
from dlpipe.models.resnet import HEAD
from dlpipe.workflow_graph import load_stages
from test_bad_input import Fingerprint, assert_one_error_line, differences

SEED = int(os.environ.get("DLPIPE_FILE_SEED", "0"))
CASES = os.environ.get("DLPIPE_FILE_CASES")  # None: one per file
MATCH = os.environ.get("DLPIPE_FILE_MATCH", "")  # comma-separated: only the files whose path holds one
# Weights whose reader drops some tensors by design: load_backbone keeps every weight but the
# head, which transfer replaces (ImageNet's has 1000 classes), so corrupting it changes nothing.
DROPPED_BY_READER = {"models/transfer_backbone.pt": f"{HEAD}."}


# --------------------------------------------------------------------------- what a run's stage files are


@dataclass(frozen=True)
class StageFile:
    rel: str
    kind: str  # "tensors", "json", "csv", "weights", "checkpoint"
    layout: object | None
    producer: str  # the stage that writes it
    readers: tuple[str, ...]  # the stages that read it


def owner(rel: str, paths) -> bool:
    return any(rel == p or rel.startswith(p.rstrip("/") + "/") for p in paths)


def checkpoint_stages() -> dict[str, str]:
    """checkpoints/... path -> the training stage that writes it (its module's Path constants)."""
    import importlib

    found = {}
    for stage in load_stages(REPO / "dvc.yaml"):
        module = importlib.import_module(f"dlpipe.stages.{stage.name}")
        for value in vars(module).values():
            for item in value.values() if isinstance(value, dict) else (value,):
                if isinstance(item, Path) and item.parts[:1] == ("checkpoints",) and item.suffix == ".pt":
                    found[item.as_posix()] = stage.name
    return found


def stage_files(repo: Path) -> list[StageFile]:
    stages = load_stages(REPO / "dvc.yaml")
    files = []
    for path in sorted(p for root in ("data", "models", "reports") for p in (repo / root).rglob("*") if p.is_file()):
        rel = path.relative_to(repo).as_posix()
        producer = next((s.name for s in stages if owner(rel, s.outs)), None)
        readers = tuple(s.name for s in stages if s.name != producer and owner(rel, s.deps))
        layout = layouts.for_path(rel)
        if rel.startswith("models/") and rel.endswith(".pt") and layout is None:
            kind = "weights"
        elif layout is not None:
            kind = {layouts.TensorFile: "tensors", layouts.JsonFile: "json", layouts.CsvFile: "csv"}[type(layout)]
        else:
            continue
        if readers:
            files.append(StageFile(rel, kind, layout, producer, readers))
    for rel, stage in sorted(checkpoint_stages().items()):
        if (repo / rel).is_file():
            files.append(StageFile(rel, "checkpoint", None, stage, (stage,)))
    return files


# --------------------------------------------------------------------------- corruptions, generated


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def other_dtype(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32) if not t.is_floating_point() else t.to(torch.int64)


def narrower(t: torch.Tensor) -> torch.Tensor:
    return t[..., :-1] if t.shape[-1] > 1 else torch.cat([t, t], dim=-1)


def with_first(t: torch.Tensor, value) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = value
    return t


def tensor_corruptions(raw: bytes, tensors: dict, layout: layouts.TensorFile | None, rng: random.Random
                       ) -> dict[str, Callable[[], bytes]]:
    """name -> the corrupted file's bytes. ``layout`` None: a state dict (weights)."""
    names = list(layout.tensors) if layout else list(tensors)
    if layout is None and len(names) > 4:
        # A state dict's keys are all checked alike (against the model): its first, its last and two drawn.
        names = [names[0], *rng.sample(names[1:-1], 2), names[-1]]
    cases = {
        "cut-in-half": lambda: raw[: len(raw) // 2],
        "random-bytes": lambda: rng.randbytes(max(64, len(raw) // 100)),
        "not-a-dict": lambda: torch_bytes(tensors[names[0]]),
        "unknown-key": lambda: torch_bytes({**tensors, "stray": torch.zeros(1)}),
    }
    # torch fills in a BatchNorm's missing num_batches_tracked itself (old files lack it)
    for name in [n for n in names if not n.endswith("num_batches_tracked")]:
        spec = layout.tensors[name] if layout else None
        cases[f"{name}:removed"] = lambda n=name: torch_bytes({k: v for k, v in tensors.items() if k != n})
        cases[f"{name}:resized"] = lambda n=name: torch_bytes({**tensors, n: narrower(tensors[n])})
        if spec is None:
            continue
        cases[f"{name}:other-dtype"] = lambda n=name: torch_bytes({**tensors, n: other_dtype(tensors[n])})
        cases[f"{name}:empty"] = lambda n=name: torch_bytes({**tensors, n: tensors[n][:0]})
        if spec.dtype == layouts.FLOAT:
            cases[f"{name}:nan"] = lambda n=name: torch_bytes({**tensors, n: with_first(tensors[n], math.nan)})
        if spec.min is not None and spec.dtype != "uint8":
            cases[f"{name}:below-min"] = lambda n=name, s=spec: torch_bytes(
                {**tensors, n: with_first(tensors[n], s.min - 1)})
        if spec.unique and len(tensors[name]) > 1:
            cases[f"{name}:repeated"] = lambda n=name: torch_bytes(
                {**tensors, n: with_first(tensors[n], int(tensors[n][1]))})
    return cases


def wrong_type(schema: dict):
    return {} if schema.get("type") in ("string", "number", "integer", "array", "boolean") or "enum" in schema else "text"


def json_corruptions(raw: bytes, record, layout: layouts.JsonFile) -> dict[str, Callable[[], bytes]]:
    def dump(obj) -> bytes:
        return json.dumps(obj).encode()  # NaN is written as NaN, as Python's json does

    cases = {"cut-in-half": lambda: raw[: len(raw) // 2], "not-json": lambda: b"\xff\xfe not json",
             "a-list": lambda: dump([record]), "a-number": lambda: dump(3)}
    schema = layout.schema

    def walk(node_schema: dict, path: tuple[str, ...]):
        for key in node_schema.get("required", []):
            sub = node_schema["properties"][key]
            where = ".".join(path + (key,))

            def edit(change, p=path + (key,)):
                doc = copy.deepcopy(record)
                node = doc
                for part in p[:-1]:
                    node = node[part]
                change(node, p[-1])
                return dump(doc)

            cases[f"{where}:removed"] = lambda e=edit: e(lambda node, k: node.pop(k))
            cases[f"{where}:wrong-type"] = lambda e=edit, s=sub: e(lambda node, k: node.__setitem__(k, wrong_type(s)))
            if sub.get("type") in ("number", "integer"):
                cases[f"{where}:nan"] = lambda e=edit: e(lambda node, k: node.__setitem__(k, math.nan))
            if "minimum" in sub or "exclusiveMinimum" in sub:
                cases[f"{where}:negative"] = lambda e=edit: e(lambda node, k: node.__setitem__(k, -1))
            if sub.get("type") == "object" and "required" in sub and len(path) < 1:
                walk(sub, path + (key,))

    if schema.get("type") == "object":
        walk(schema, ())
    elif schema.get("type") == "array" and isinstance(record, list) and record:
        cases["empty-list"] = lambda: dump([])
        item = schema["items"]
        for key in item.get("required", []):
            cases[f"[0].{key}:removed"] = lambda k=key: dump([{kk: v for kk, v in record[0].items() if kk != k}]
                                                              + record[1:])
    return cases


def csv_corruptions(raw: bytes, layout: layouts.CsvFile) -> dict[str, Callable[[], bytes]]:
    lines = raw.decode().splitlines()
    header = lines[0].split(",")
    cases = {"no-header": lambda: b"", "random-bytes": lambda: bytes(range(256)) * 4}
    if layout.min_rows:
        cases["no-rows"] = lambda: (lines[0] + "\n").encode()
    for column, kind in layout.columns.items():
        index = header.index(column)

        def drop(i=index):
            return "\n".join(",".join(c for j, c in enumerate(line.split(",")) if j != i) for line in lines).encode()

        cases[f"{column}:removed"] = drop
        if kind == "number" and len(lines) > 1:
            def text(i=index):
                row = lines[1].split(",")
                row[i] = "oops"
                return "\n".join([lines[0], ",".join(row), *lines[2:]]).encode()

            cases[f"{column}:text"] = text
    return cases


def checkpoint_corruptions(raw: bytes, state: dict) -> dict[str, Callable[[], bytes]]:
    cases = {"cut-in-half": lambda: raw[: len(raw) // 2], "not-a-dict": lambda: torch_bytes([1, 2, 3])}
    for key in ("epoch", "history", "rng"):
        cases[f"{key}:removed"] = lambda k=key: torch_bytes({kk: v for kk, v in state.items() if kk != k})
        cases[f"{key}:wrong-type"] = lambda k=key: torch_bytes({**state, k: "text"})
    model = next((k for k, v in state.items() if isinstance(v, dict) and v and
                  all(isinstance(t, torch.Tensor) for t in v.values()) and k != "best_state"), None)
    if model:
        cases[f"{model}:emptied"] = lambda: torch_bytes({**state, model: {"stray": torch.zeros(1)}})
    return cases


def corruptions(repo: Path, f: StageFile) -> dict[str, Callable[[], bytes]]:
    rng = random.Random(f"{SEED}:{f.rel}")  # the same cases and bytes for a file, however often asked
    raw = (repo / f.rel).read_bytes()
    if f.kind in ("tensors", "weights"):
        tensors = torch.load(repo / f.rel, map_location="cpu", weights_only=True)
        cases = tensor_corruptions(raw, tensors, f.layout, rng)
        dropped = DROPPED_BY_READER.get(f.rel)
        return {name: make for name, make in cases.items() if not (dropped and name.startswith(dropped))}
    if f.kind == "json":
        return json_corruptions(raw, json.loads(raw), f.layout)
    if f.kind == "csv":
        return csv_corruptions(raw, f.layout)
    return checkpoint_corruptions(raw, torch.load(repo / f.rel, map_location="cpu", weights_only=True))


@dataclass(frozen=True)
class Case:
    file: StageFile
    name: str
    reader: str

    @property
    def id(self) -> str:
        return f"{self.file.rel} [{self.name}] -> {self.reader}"


def all_cases(repo: Path, files: list[StageFile]) -> list[Case]:
    return [Case(f, name, reader) for f in files if any(part in f.rel for part in MATCH.split(","))
            for name in corruptions(repo, f) for reader in f.readers]


def drawn(cases: list[Case], how_many: str | None) -> list[Case]:
    """One case per file, two checkpoints' among them (None), N cases, or every case ("0")."""
    rng = random.Random(SEED)
    if how_many == "0":
        return cases
    if how_many is not None:
        return rng.sample(cases, min(int(how_many), len(cases)))
    by_file: dict[str, list[Case]] = {}
    for case in cases:
        by_file.setdefault(case.file.rel, []).append(case)
    one_each = [rng.choice(group) for group in by_file.values()]
    # A checkpoint case retrains its stage (seconds each): two of them in the default suite.
    trained = [case for case in one_each if case.file.kind == "checkpoint"]
    return [case for case in one_each if case.file.kind != "checkpoint"] + rng.sample(trained, min(2, len(trained)))


# --------------------------------------------------------------------------- the workspace and one case


class Opened:
    """The files this process opens while ``watching`` (a sys audit hook: it cannot be removed,
    so it records only then), leaving out reads that only hash a file (a run identity)."""

    def __init__(self):
        self.watching, self.paths = False, set()
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args) -> None:
        if not self.watching or event != "open" or not isinstance(args[0], (str, Path)):
            return
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_name == "sha256_file":
                return
            frame = frame.f_back
        self.paths.add(Path(os.path.abspath(args[0])))

    @contextlib.contextmanager
    def watch(self):
        self.paths.clear()
        self.watching = True
        try:
            yield self.paths
        finally:
            self.watching = False


OPENED = Opened()


@pytest.fixture(scope="module")
def ws(tiny_dvc_run, tmp_path_factory):
    repo, env = clone_run(tiny_dvc_run, tmp_path_factory.mktemp("stage_files") / "repo")
    fingerprint = Fingerprint(repo)
    return repo, fingerprint, fingerprint()


@pytest.fixture(autouse=True)
def torch_globals():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def backup(repo: Path, rels: list[str], dest: Path) -> None:
    """Copies of what a run of the reader may replace: hard links (every writer replaces a
    file by renaming a new one onto it), real copies for DVCLive's folders (appended to)."""
    for rel in rels:
        src = repo / rel
        if not src.exists():
            continue
        link = shutil.copy2 if rel.startswith("dvclive/") else os.link
        if src.is_dir():
            shutil.copytree(src, dest / rel, symlinks=True, copy_function=link)
        else:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            link(src, dest / rel)


def restore(repo: Path, rels: list[str], dest: Path) -> None:
    for rel in rels:
        target = repo / rel
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        if (dest / rel).exists():
            shutil.move(dest / rel, target)


NOT_READ_BY_READER = "not read"


def run_case(repo: Path, fingerprint: Fingerprint, case: Case, data: bytes, capfd, caplog) -> str | None:
    """None if the case keeps the contract, NOT_READ_BY_READER if the stage ran without
    opening the file (exit 0), else what broke the contract."""
    from dlpipe.__main__ import main as dlpipe_main

    target = repo / case.file.rel
    original = target.read_bytes()
    reader = next(s for s in load_stages(REPO / "dvc.yaml") if s.name == case.reader)
    checkpoints = {Path(rel).parent.as_posix() for rel, stage in checkpoint_stages().items() if stage == case.reader}
    kept = [*reader.outs, *sorted(checkpoints), "dvc.lock"]
    saved = repo.parent / "saved"
    shutil.rmtree(saved, ignore_errors=True)
    backup(repo, kept, saved)
    try:
        target.unlink()  # a new file: the hard links of the backup keep the original
        target.write_bytes(data)
        before = fingerprint()
        capfd.readouterr()
        caplog.clear()
        with OPENED.watch() as opened:
            status = dlpipe_main([case.reader])
        stderr = capfd.readouterr().err
        if case.file.kind == "checkpoint":
            aside = target.with_name(target.name + ".malformed")
            if status != 0 or "set aside as" not in caplog.text or not aside.is_file() or aside.read_bytes() != data:
                return f"status {status}, set aside: {aside.is_file()}\n{stderr[-2000:]}"
            return None
        if status == 0 and target.absolute() not in opened:
            return NOT_READ_BY_READER  # the reader depends on the file's folder, not on this file
        try:
            line = assert_one_error_line(status, stderr)
        except AssertionError as exc:
            return str(exc)[:3000]
        if case.file.rel not in line:
            return f"the line does not name {case.file.rel}: {line}"
        if case.file.layout is not None and f"rerun {case.file.producer}" not in line:
            return f"the line does not say 'rerun {case.file.producer}': {line}"
        changed = differences(before, fingerprint())
        if any(changed.values()):
            return f"outputs changed: {changed}"
        return None
    finally:
        restore(repo, kept, saved)
        for aside in target.parent.glob("*.malformed"):
            aside.unlink()
        if not owner(case.file.rel, kept):
            target.unlink()
            target.write_bytes(original)
        shutil.rmtree(saved, ignore_errors=True)
        assert target.read_bytes() == original


_OPENING: dict[str, tuple[str, ...]] = {}


def opening_readers(repo: Path, files: list[StageFile], capfd) -> list[StageFile]:
    """``files`` with only the readers that open them: each reader run once on the finished run
    (its outputs restored after), watching what it opens. A stage depending on a folder reads
    only some of its files (train_lenet: the train and val splits, not test.pt)."""
    from dlpipe.__main__ import main as dlpipe_main

    if not _OPENING:
        for stage in load_stages(REPO / "dvc.yaml"):
            if not any(stage.name in f.readers for f in files):
                continue
            kept = [*stage.outs, *sorted({Path(rel).parent.as_posix() for rel, name in checkpoint_stages().items()
                                          if name == stage.name}), "dvc.lock"]
            saved = repo.parent / "saved"
            shutil.rmtree(saved, ignore_errors=True)
            backup(repo, kept, saved)
            try:
                with OPENED.watch() as opened:
                    status = dlpipe_main([stage.name])
                err = capfd.readouterr().err
                assert status == 0, f"{stage.name} on the finished run: {status}\n{err[-2000:]}"
                for path in opened:
                    if path.is_relative_to(repo):
                        rel = path.relative_to(repo).as_posix()
                        _OPENING[rel] = (*_OPENING.get(rel, ()), stage.name)
            finally:
                restore(repo, kept, saved)
                shutil.rmtree(saved, ignore_errors=True)
    return [dataclasses.replace(f, readers=tuple(r for r in f.readers if r in _OPENING.get(f.rel, ())))
            for f in files]


def check_cases(ws, cases: list[Case], monkeypatch, capfd, caplog) -> int:
    """Run ``cases``; the number whose reader did read the file (the others ran without it)."""
    repo, fingerprint, baseline = ws
    monkeypatch.chdir(repo)
    failures, not_read = [], []
    for case in cases:
        data = corruptions(repo, case.file)[case.name]()
        problem = run_case(repo, fingerprint, case, data, capfd, caplog)
        if problem == NOT_READ_BY_READER:
            not_read.append(case.id)
        elif problem:
            failures.append(f"{case.id}: {problem}")
    print(f"[stage files] {len(cases) - len(not_read)} cases read the corrupted file; "
          f"{len(not_read)} ran a stage that depends on its folder and did not open it")
    assert differences(baseline, fingerprint()) == {"changed": [], "added": [], "removed": []}
    assert not failures, f"{len(failures)} of {len(cases)} cases broke the contract:\n" + "\n\n".join(failures)
    return len(cases) - len(not_read)


# --------------------------------------------------------------------------- the tests


def test_every_declared_file_of_a_finished_run_matches_its_layout(ws):
    """The declarations describe what the stages really write (their writers check it too)."""
    from dlpipe.tensor_io import load_tensors

    repo = ws[0]
    checked = 0
    for f in stage_files(repo):
        if f.layout is None:
            continue
        path = repo / f.rel
        if f.kind == "tensors":
            f.layout.check(path, load_tensors(path, f.producer))
        else:
            f.layout.read(path)
        checked += 1
    assert checked >= 20


# Written for people, read by no stage (the houses stages depend on their folder): the fitted
# feature pipeline. The test below checks that no stage's code names it.
NOT_READ = {"data/prepared/houses/features.json"}


def test_every_file_a_stage_reads_from_another_is_checked(ws):
    """Each file under another stage's output that a stage depends on has a layout, is weights
    (checked against the model), a checkpoint, or is one the readers never parse (pictures,
    which the report embeds as they are; DVCLive's series, checked by their reader)."""
    repo = ws[0]
    for rel in NOT_READ:
        naming = [p.name for p in (REPO / "src/dlpipe/stages").glob("*.py") if Path(rel).name in p.read_text()]
        assert naming == ["prepare_houses.py"], naming
    checked = {f.rel for f in stage_files(repo)}
    stages = load_stages(REPO / "dvc.yaml")
    outs = [out for s in stages for out in s.outs if not out.startswith("data/raw")]
    unchecked = []
    for s in stages:
        for dep in s.deps:
            if not owner(dep, outs) and not any(owner(out, [dep]) for out in outs):
                continue  # a source file, params, or raw data (checked by its prepare stage)
            paths = [repo / dep] if (repo / dep).is_file() else sorted((repo / dep).rglob("*"))
            for path in paths:
                rel = path.relative_to(repo).as_posix()
                if path.is_file() and rel not in checked | NOT_READ and not rel.startswith("dvclive/") \
                        and path.suffix != ".png" and rel.startswith(("data/prepared", "models", "reports")):
                    unchecked.append(f"{rel} (read by {s.name})")
    assert not unchecked, unchecked


def test_generated_corruptions_of_stage_files_exit_2_with_one_line_and_keep_every_output(ws, monkeypatch, capfd,
                                                                                         caplog):
    repo = ws[0]
    monkeypatch.chdir(repo)
    files = opening_readers(repo, stage_files(repo), capfd)
    assert all(f.readers for f in files), [f.rel for f in files if not f.readers]  # each read by some stage
    cases = drawn(all_cases(repo, files), CASES)
    assert {f.kind for f in files} == {"tensors", "json", "csv", "weights", "checkpoint"}
    checkpoints = sum(f.kind == "checkpoint" for f in files)
    assert len({c.file.rel for c in cases}) == len(files) - checkpoints + min(2, checkpoints) or CASES or MATCH
    print(f"\n[stage files] {len(cases)} of {len(all_cases(repo, files))} generated cases over {len(files)} files "
          f"(seed {SEED})")
    assert check_cases(ws, cases, monkeypatch, capfd, caplog) == len(cases)  # every reader opened its file


@pytest.mark.slow
def test_every_generated_corruption_of_stage_files(ws, monkeypatch, capfd, caplog):
    repo = ws[0]
    monkeypatch.chdir(repo)
    cases = all_cases(repo, opening_readers(repo, stage_files(repo), capfd))
    print(f"\n[stage files] all {len(cases)} generated cases (seed {SEED})")
    assert check_cases(ws, cases, monkeypatch, capfd, caplog) == len(cases)  # every reader opened its file


def test_the_layouts_refuse_what_their_writers_would_not_write(tmp_path):
    """A writer checks against its own declaration: a producer cannot drift from it."""
    from dlpipe.data import classifier_prepared

    images = torch.zeros(4, 3, 32, 32, dtype=torch.float32)
    with pytest.raises(Exception, match="'images': expected uint8 N x 3 x 32 x 32, got float32"):
        classifier_prepared.save_split(tmp_path, "train", images, torch.zeros(4, dtype=torch.int64))
    assert not (tmp_path / "train.pt").exists()
    assert fnmatchcase("data/prepared/classifier/train.pt", classifier_prepared.SPLIT.pattern)
