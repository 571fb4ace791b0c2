"""DVC and Snakemake plan the same graph, and dlpipe.workflow_graph reads dvc.yaml right.

Nothing here runs a stage: both engines only plan, so no outputs are needed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dlpipe import config, declare
from dlpipe.errors import PipelineError
from dlpipe.workflow_graph import (
    is_directory,
    load_stages,
    produced_by,
    resolve_params,
    source_files,
    stages_from_dvc,
)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv running the tests holds both engines
HOUSES = {"fetch_houses", "prepare_houses", "lr_find_houses", "train_houses", "evaluate_houses"}

_NODE = re.compile(r'^\s*("[^"]+"|\w+)\s*(\[(?P<attrs>.*)\])?\s*;?\s*$')
_EDGE = re.compile(r'^\s*("[^"]+"|\w+)\s*->\s*("[^"]+"|\w+)')
_LABEL = re.compile(r'label\s*=\s*"([^"]*)"')


def parse_dot(text: str) -> tuple[set[str], set[tuple[str, str]]]:
    """Node names and edges of a dot graph; a node's name is its label when it has one
    (Snakemake: numeric ids labelled with rule names; DVC: quoted stage names)."""
    names: dict[str, str] = {}
    raw_edges = []
    for line in text.splitlines():
        edge = _EDGE.match(line)
        if edge:
            raw_edges.append((edge.group(1).strip('"'), edge.group(2).strip('"')))
            continue
        node = _NODE.match(line)
        if node and node.group(1) not in ("graph", "node", "edge"):
            label = _LABEL.search(node.group("attrs") or "")
            node_id = node.group(1).strip('"')
            names[node_id] = label.group(1) if label else node_id
    edges = {(names.get(a, a), names.get(b, b)) for a, b in raw_edges}
    return set(names.values()) | {n for e in edges for n in e}, edges


def _run(tool: str, *args: str, cwd: Path) -> str:
    done = subprocess.run([str(BIN / tool), *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{tool} {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _snakemake_sandbox(tmp_path: Path) -> Path:
    """The graph files in a fresh folder, source deps as empty placeholders.

    Snakemake refuses to plan when a dep that no rule makes is missing, and in
    the repo it would also look at whatever outputs exist; only the graph is
    under test here, so it gets a clean tree with every source dep present.
    """
    for name in ("Snakefile", "dvc.yaml", "params.yaml"):
        shutil.copy2(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "workflow", tmp_path / "workflow")
    stages = load_stages(REPO / "dvc.yaml")
    made = produced_by(stages)
    for dep in {d for s in stages for d in s.deps} - set(made):
        path = tmp_path / dep
        if is_directory(dep):
            path.mkdir(parents=True, exist_ok=True)
            (path / "__init__.py").touch()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    return tmp_path


def expected_graph() -> tuple[set[str], set[tuple[str, str]]]:
    stages = load_stages(REPO / "dvc.yaml")
    made = produced_by(stages)
    edges = {(made[d], s.name) for s in stages for d in s.deps if d in made}
    return {s.name for s in stages}, edges


def test_dvc_and_snakemake_plan_the_same_graph(tmp_path):
    dvc_nodes, dvc_edges = parse_dot(_run("dvc", "dag", "--dot", cwd=REPO))
    snake_dot = _run("snakemake", "--dag", "--forceall", cwd=_snakemake_sandbox(tmp_path))
    snake_nodes, snake_edges = parse_dot(snake_dot)
    snake_nodes.discard("all")
    snake_edges = {e for e in snake_edges if "all" not in e}

    assert HOUSES <= dvc_nodes
    assert ("fetch_houses", "prepare_houses") in dvc_edges
    assert snake_nodes == dvc_nodes
    assert snake_edges == dvc_edges
    # ...and both are the graph dvc.yaml spells out, read by the adapter.
    assert (dvc_nodes, dvc_edges) == expected_graph()


def test_snakemake_dry_run_plans_one_job_per_stage_with_all_on_top(tmp_path):
    out = _run("snakemake", "-n", "--forceall", "--cores", "2", cwd=_snakemake_sandbox(tmp_path))
    rules = re.findall(r"^\s*(?:local)?rule (\w+):", out, flags=re.M)
    assert sorted(rules) == sorted(expected_graph()[0] | {"all"})
    # Each rule reserves the threads params.yaml declares for its stage (threads.<stage>):
    # Snakemake prints a threads line for every job above 1 thread.
    threads = dict(re.findall(r"rule (\w+):\n(?:\s+\w+:.*\n)*?\s+threads: (\d+)", out))
    declared = yaml.safe_load((REPO / "params.yaml").read_text())["threads"]
    assert set(declared) == expected_graph()[0]
    assert {"train_houses", "train_lenet", "train_transfer_finetune"} <= {n for n, c in declared.items() if c > 1}
    assert threads == {name: str(count) for name, count in declared.items() if count > 1}
    # ...and the local profile sets none of its own: the declaration is the only one.
    out = _run("snakemake", "-n", "--forceall", "--workflow-profile", "workflow/profiles/local", cwd=tmp_path)
    assert dict(re.findall(r"rule (\w+):\n(?:\s+\w+:.*\n)*?\s+threads: (\d+)", out)) == threads


def test_parse_dot_reads_both_dialects():
    snake = 'digraph s {\n node[shape=box];\n 0[label = "all", color = "0 0 0"];\n 1[label = "a"];\n 1 -> 0\n}'
    dvc = 'strict digraph {\n"a";\n"b";\n"a" -> "b";\n}'
    assert parse_dot(snake) == ({"all", "a"}, {("a", "all")})
    assert parse_dot(dvc) == ({"a", "b"}, {("a", "b")})


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("data/raw/houses", True),
        ("src/dlpipe/training", True),
        ("checkpoints/houses/", True),
        ("models/houses.pt", False),
        ("reports/lr_find/houses.json", False),
        ("src/dlpipe/models/mlp.py", False),
    ],
)
def test_directory_convention(path, expected):
    assert is_directory(path) is expected


def test_outs_skip_persisted_and_include_metrics_and_plots_in_both_spellings():
    dvc_yaml = yaml.safe_load(
        """
stages:
  s:
    cmd: [echo one, echo two]
    deps: [a.py, {data/in: {}}]
    params: [seed, {params.yaml: [houses.train]}]
    outs:
      - m.pt
      - ckpt: {persist: true, cache: false}
      - keep: {persist: false}
    metrics:
      - {r/metrics.json: {cache: false}}
    plots:
      - r/p.csv
      - r/q.csv: {x: a, y: b}
"""
    )
    (stage,) = stages_from_dvc(dvc_yaml)
    assert stage.cmd == "echo one && echo two"
    assert stage.deps == ("a.py", "data/in")
    assert stage.outs == ("m.pt", "keep", "r/metrics.json", "r/p.csv", "r/q.csv")
    assert stage.params == ("seed", "houses.train")


def test_real_dvc_yaml_train_stage():
    stages = {s.name: s for s in load_stages(REPO / "dvc.yaml")}
    train = stages["train_houses"]
    assert "checkpoints/houses" not in train.outs  # persisted: a cache, not a product
    assert "models/houses.pt" in train.outs
    assert "reports/metrics/houses.json" in stages["evaluate_houses"].outs
    assert produced_by(list(stages.values()))["data/prepared/houses"] == "prepare_houses"


@pytest.mark.parametrize(
    "spec",
    [
        {"cmd": "x", "wdir": "sub"},
        {"cmd": "x", "params": [{"other.yaml": ["k"]}]},
    ],
)
def test_unsupported_stage_features_are_refused(spec):
    with pytest.raises(PipelineError, match="stage 's'"):
        stages_from_dvc({"stages": {"s": spec}})


def test_resolve_params_flat_and_deterministic():
    config = {"seed": 42, "houses": {"train": {"lr": "auto", "epochs": 3}, "model": {"hidden": [64, 16]}}}
    resolved = resolve_params(["seed", "houses.train", "houses.model.hidden"], config)
    assert resolved == {"seed": "42", "houses.train": '{"epochs": 3, "lr": "auto"}', "houses.model.hidden": "[64, 16]"}
    reordered = {"seed": 42, "houses": {"train": {"epochs": 3, "lr": "auto"}}}
    assert resolve_params(["houses.train"], reordered)["houses.train"] == resolved["houses.train"]
    assert json.loads(resolved["houses.train"]) == config["houses"]["train"]


@pytest.mark.parametrize("key", ["houses.optimizer", "nope", "seed.deeper"])
def test_resolve_params_missing_key_names_it(key):
    config = {"seed": 42, "houses": {"train": {}}}
    with pytest.raises(PipelineError, match=re.escape(f"'{key}'")):
        resolve_params([key], config)


def test_every_stage_param_key_exists_in_params_yaml():
    config = yaml.safe_load((REPO / "params.yaml").read_text())
    for stage in load_stages(REPO / "dvc.yaml"):
        assert set(resolve_params(stage.params, config)) == set(stage.params)


def test_source_files_lists_code_not_caches(tmp_path):
    pkg = tmp_path / "src" / "pkg"
    (pkg / "sub" / "__pycache__").mkdir(parents=True)
    for name in ("b.py", "a.py", "sub/c.py", "sub/__pycache__/c.cpython-311.pyc"):
        (pkg / name).write_text("")
    assert source_files("src/pkg", root=tmp_path) == ["src/pkg/a.py", "src/pkg/b.py", "src/pkg/sub/c.py"]
    assert source_files("src/missing", root=tmp_path) == ["src/missing"]


def test_generated_files_are_what_the_declarations_give(tmp_path):
    """dvc.yaml (from the stage declarations) and the params schema (from dlpipe.config's
    dataclasses) are generated: a hand edit or a forgotten `make generate` fails here."""
    check = [sys.executable, "-m", "dlpipe.declare", "--check"]
    done = subprocess.run(check, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (REPO / "dvc.yaml").read_text().startswith(declare.HEADER)
    schema_file = REPO / "workflow/schemas/params.schema.yaml"
    for stale_one in ("dvc.yaml", "workflow/schemas/params.schema.yaml"):
        root = tmp_path / stale_one.replace("/", "_")
        for rel in ("dvc.yaml", "workflow/schemas/params.schema.yaml"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text((REPO / rel).read_text())
        edited = root / stale_one
        edited.write_text(edited.read_text() + "# a hand edit\n")
        done = subprocess.run([*check, "--root", str(root)], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 1 and f"{edited} is stale: run `make generate`" in done.stderr, done.stderr
    assert yaml.safe_load(schema_file.read_text()) == config.schema()


def test_each_stage_reads_one_model_section_and_the_shared_keys():
    """params.yaml has one section per model: a stage reads its own model's section and the
    shared keys, and another model's results only through the files it declares as deps."""
    shared = {"seed", "device", "threads", "accel"}
    for name, spec in declare.declarations().items():
        sections = {key.split(".")[0] for key in spec.params} - shared
        assert len(sections) <= 1, f"{name} reads {sorted(sections)}"
        assert not sections or sections <= set(config.Params.__dataclass_fields__), (name, sections)


def test_code_deps_follow_the_real_imports():
    """Each stage's code deps are the closure of its imports: the houses training runs the shared
    loop and the MLP, not the report's page builder or another model's code."""
    train = {p.relative_to(REPO).as_posix() for p in declare.stage_code("train_houses")}
    assert {"src/dlpipe/stages/train_houses.py", "src/dlpipe/training/loop.py", "src/dlpipe/models/mlp.py",
            "src/dlpipe/stages/_houses.py"} <= train
    assert not {p for p in train if p.startswith(("src/dlpipe/report/page", "src/dlpipe/models/lenet"))}, train
    assert not {"src/dlpipe/errors.py", "src/dlpipe/declare.py", "src/dlpipe/__init__.py"} & train
    stages = {stage.name: stage for stage in load_stages(REPO / "dvc.yaml")}
    assert [d for d in stages["train_houses"].deps if d.startswith("src/")] == sorted(train)
    # Every non-code dep is another stage's output (or, for the report, its template folder).
    made = produced_by(list(stages.values()))
    for stage in stages.values():
        for dep in stage.deps:
            assert dep.startswith("src/") or dep in made or dep == "params.yaml", (stage.name, dep)
