"""params validation: the real params.yaml loads; bad ones are refused, with the
offending dotted key named, by the loader, the CLI, and Snakemake alike."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY_OVERRIDES, engine_env, set_key
from dlpipe.config import SGD, Adam, Params, StepSchedule, load_params
from dlpipe.errors import PipelineError
from dlpipe.runtime import select_device
from test_engines_graph import _snakemake_sandbox

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SENTINEL = "SENTINEL_VALUE_TO_REPLACE"


def real_raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def _delete(raw: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node = raw
    for part in parents:
        node = node[part]
    del node[last]


def write_variant(path: Path, sets: dict | None = None, deletes: tuple[str, ...] = (), literal: str | None = None) -> Path:
    """The real params.yaml with keys set / deleted; ``literal`` is written verbatim
    (unquoted) where a key was set to SENTINEL, to get YAML's own reading of it."""
    raw = real_raw()
    for key, value in (sets or {}).items():
        if callable(value):  # a function of the old value (keys that hold dots)
            *parents, last = key.split(".")
            node = raw
            for part in parents:
                node = node[part]
            value = value(node[last])
        set_key(raw, key, value)
    for key in deletes:
        _delete(raw, key)
    text = yaml.safe_dump(raw, sort_keys=False)
    if literal is not None:
        assert text.count(SENTINEL) == 1
        text = text.replace(SENTINEL, literal)
    path.write_text(text)
    return path


# (id, sets, deletes, literal, the dotted key the message must name)
BAD = [
    ("unknown-top-level", {"bogus": 1}, (), None, "bogus"),
    ("unknown-nested", {"houses.train.foo": 1}, (), None, "houses.train.foo"),
    ("wrong-type", {"houses.train.epochs": "ten"}, (), None, "houses.train.epochs"),
    ("lr-zero", {"houses.train.lr": 0}, (), None, "houses.train.lr"),
    ("lr-negative", {"houses.train.lr": -0.001}, (), None, "houses.train.lr"),
    ("batch-size-zero", {"houses.train.batch_size": 0}, (), None, "houses.train.batch_size"),
    ("device-tpu", {"device": "tpu"}, (), None, "device"),
    ("optimizer-unknown", {"houses.train.optimizer.name": "rmsprop"}, (), None, "houses.train.optimizer.name"),
    ("optimizer-not-a-block", {"houses.train.optimizer": "adam"}, (), None, "houses.train.optimizer"),
    # Option blocks take only the chosen option's keys.
    ("momentum-beside-adam", {"houses.train.optimizer.momentum": 0.9}, (), None, "houses.train.optimizer.momentum"),
    ("step-size-beside-onecycle", {"lenet.train.schedule.step_size": 10}, (), None, "lenet.train.schedule.step_size"),
    ("lr-1e-3-no-dot", {"houses.train.lr": SENTINEL}, (), "1e-3", "houses.train.lr"),
    ("val-fraction-1.5", {"houses.prepare.val_fraction": 1.5}, (), None, "houses.prepare.val_fraction"),
    ("sha256-not-hex", {"houses.data.sha256": lambda old: {**old, "train.csv": "xyz"}}, (), None,
     "houses.data.sha256.train.csv"),
    ("lr-find-in-the-old-place", {"lr_find": {"houses": {}}}, (), None, "lr_find"),
    ("hidden-empty", {"houses.model.hidden": []}, (), None, "houses.model.hidden"),
]


def test_real_params_yaml_loads_into_frozen_dataclasses():
    raw = real_raw()
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    assert params.raw == raw
    assert params.seed == raw["seed"] and params.device == raw["device"]
    assert params.houses.data.sha256 == raw["houses"]["data"]["sha256"]
    assert params.houses.model.hidden == tuple(raw["houses"]["model"]["hidden"])
    assert params.houses.train.epochs == raw["houses"]["train"]["epochs"]
    assert params.houses.prepare.val_fraction == raw["houses"]["prepare"]["val_fraction"]
    # An option block becomes the dataclass of the chosen option.
    assert params.houses.train.optimizer == Adam(**raw["houses"]["train"]["optimizer"])
    assert params.lenet.train.optimizer == SGD(**raw["lenet"]["train"]["optimizer"])
    with pytest.raises(AttributeError):
        params.seed = 1  # frozen


def test_tiny_overrides_load_through_the_schema(tmp_path):
    """dlpipe.tiny (the tests' tiny runs, the benchmarks' --quick) names only keys the
    schema knows: a renamed params key fails here, named, not deep in a pipeline run."""
    params = load_params(write_variant(tmp_path / "params.yaml", TINY_OVERRIDES))
    assert params.device == "cpu" and params.houses.train.epochs == TINY_OVERRIDES["houses.train.epochs"]


def test_good_variant_loads_number_lr_and_int_as_float(tmp_path):
    path = write_variant(tmp_path / "params.yaml",
                         {"houses.train.lr": SENTINEL, "houses.prepare.outlier_min_living_area": 3000},
                         literal="1.0e-3")
    params = load_params(path)
    assert params.houses.train.lr == pytest.approx(1.0e-3) and isinstance(params.houses.train.lr, float)
    assert isinstance(params.houses.prepare.outlier_min_living_area, float)
    # Checkpoint identity follows the values of the named sections.
    base = load_params(REPO / "params.yaml")
    assert params.section_hash("houses.train") != base.section_hash("houses.train")
    assert params.section_hash("houses.model") == base.section_hash("houses.model")


@pytest.mark.parametrize(("sets", "deletes", "literal", "key"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_params_are_refused_naming_the_key(tmp_path, sets, deletes, literal, key):
    path = write_variant(tmp_path / "bad.yaml", sets, deletes, literal)
    with pytest.raises(PipelineError) as info:
        load_params(path)
    message = str(info.value)
    assert f"'{key}'" in message
    assert str(path) in message  # ...and the file


def test_yaml_reads_1e_minus_3_without_dot_as_a_string(tmp_path):
    # Why the case above exists: YAML 1.1 (PyYAML) needs a dot in a float.
    path = write_variant(tmp_path / "p.yaml", {"houses.train.lr": SENTINEL}, literal="1e-3")
    assert yaml.safe_load(path.read_text())["houses"]["train"]["lr"] == "1e-3"


def test_missing_required_key_is_named_with_its_section(tmp_path):
    path = write_variant(tmp_path / "bad.yaml", deletes=("houses.train.epochs",))
    with pytest.raises(PipelineError, match=r"'epochs' is a required property in 'houses\.train'"):
        load_params(path)


def test_missing_top_level_section_is_named(tmp_path):
    path = write_variant(tmp_path / "bad.yaml", deletes=("lenet",))
    with pytest.raises(PipelineError, match=r"'lenet' is a required property"):
        load_params(path)


def test_an_option_key_of_another_option_is_refused_saying_which_keys_apply(tmp_path):
    path = write_variant(tmp_path / "bad.yaml", {"houses.train.optimizer.momentum": 0.9})
    with pytest.raises(PipelineError) as info:
        load_params(path)
    assert ("unknown key 'houses.train.optimizer.momentum' (allowed with name adam or adamw: name, weight_decay)"
            in str(info.value))


def test_the_chosen_option_needs_its_own_keys(tmp_path):
    path = write_variant(tmp_path / "bad.yaml", {"houses.train.optimizer": {"name": "sgd", "weight_decay": 0.1}})
    with pytest.raises(PipelineError, match=r"'momentum' is a required property in 'houses\.train\.optimizer'"):
        load_params(path)
    path = write_variant(tmp_path / "step.yaml", {"houses.train.schedule": {"name": "step", "step_size": 5,
                                                                             "gamma": 0.5}})
    assert load_params(path).houses.train.schedule == StepSchedule("step", 5, 0.5)


@pytest.mark.parametrize(
    ("text", "where"),
    [("seed: [1, 2\ndevice: cpu\n", "line 2, column 7"), ("a: b: c\n", "line 1, column 5"),
     ("\tseed: 1\n", "line 1, column 1")],
)
def test_params_file_that_is_not_yaml(tmp_path, text, where):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(PipelineError, match=r"not valid YAML") as info:
        load_params(path)
    message = str(info.value)
    assert str(path) in message and where in message
    assert "\n" not in message  # the CLI prints it as one line


def test_params_file_that_is_not_text(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(bytes(range(128, 256)))
    with pytest.raises(PipelineError, match=r"not valid YAML: not UTF-8 text") as info:
        load_params(path)
    assert str(path) in str(info.value)


def test_params_path_that_is_a_folder(tmp_path):
    with pytest.raises(PipelineError, match=r"cannot read the params file") as info:
        load_params(tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("text", ["", "- 1\n- 2\n", "just a string\n"])
def test_params_file_that_is_yaml_but_not_a_mapping(tmp_path, text):
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    with pytest.raises(PipelineError, match="is not of type 'object'") as info:
        load_params(path)
    assert str(path) in str(info.value)


def test_missing_params_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(PipelineError, match=r"params file not found") as info:
        load_params(path)
    assert str(path) in str(info.value)


def test_a_params_file_anywhere_is_validated(tmp_path):
    """The schema comes from the typed params, not from a file beside params.yaml."""
    assert load_params(write_variant(tmp_path / "elsewhere.yaml")).seed == real_raw()["seed"]
    path = write_variant(tmp_path / "params.yaml", {"houses.train.batch_size": 0})
    with pytest.raises(PipelineError, match=re.escape("'houses.train.batch_size'")):
        load_params(path)


def _cli(cwd: Path, params: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dlpipe", "train_houses", "--params", params],
                          cwd=cwd, env=engine_env(), capture_output=True, text=True, timeout=120)


def test_cli_exits_2_with_one_error_line_and_no_traceback(tmp_path):
    write_variant(tmp_path / "bad.yaml", {"houses.train.epochs": "ten"})
    proc = _cli(tmp_path, "bad.yaml")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "'houses.train.epochs'" in errors[0] and "bad.yaml" in errors[0]
    # Refused before any work: nothing was written beside the params.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


@pytest.mark.parametrize("content", ["seed: [1, 2\ndevice: cpu\n", None], ids=["not-yaml", "missing"])
def test_cli_unreadable_params_is_one_error_line(tmp_path, content):
    if content is not None:
        (tmp_path / "bad.yaml").write_text(content)
    proc = _cli(tmp_path, "bad.yaml")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "bad.yaml" in lines[0], proc.stderr


@pytest.mark.parametrize(
    ("sets", "fragments"),
    [
        ({"houses.train.epochs": "ten"}, ["On instance['houses']['train']['epochs']"]),
        ({"houses.train.foo": 1}, ["'foo' was unexpected", "On instance['houses']['train']"]),
        ({"houses.train.lr": SENTINEL}, ["On instance['houses']['train']['lr']"]),
    ],
    ids=["wrong-type", "unknown-nested", "lr-1e-3-no-dot"],
)
def test_snakemake_refuses_the_same_bad_params(tmp_path, sets, fragments):
    sandbox = _snakemake_sandbox(tmp_path)
    write_variant(sandbox / "params.yaml", sets, literal="1e-3" if SENTINEL in sets.values() else None)
    proc = subprocess.run([str(BIN / "snakemake"), "-n", "--cores", "1"], cwd=sandbox, env=engine_env(),
                          capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Error validating config file" in output, output
    # Snakemake's validator spells the dotted key as instance['houses']['train'][...].
    for fragment in fragments:
        assert fragment in output, output


def test_snakemake_plans_with_the_real_params(tmp_path):
    # The control for the test above: the same sandbox with good params plans fine.
    sandbox = _snakemake_sandbox(tmp_path)
    proc = subprocess.run([str(BIN / "snakemake"), "-n", "--cores", "1"], cwd=sandbox, env=engine_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_select_device_cuda_without_gpu_names_device(name):
    with pytest.raises(PipelineError, match=r"'device'") as info:
        select_device(name)
    assert name in str(info.value)


def test_select_device_cpu_and_auto():
    assert select_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert select_device("auto").type == expected
