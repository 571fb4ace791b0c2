"""The params loader at its edges: non-finite numbers, bounds, non-string and duplicate
keys, alias bombs and huge files, each refused with one PipelineError line naming the
key; and documents generated from the schema's edges, each either loaded or refused
with exactly one short line, never another exception."""

from __future__ import annotations

import copy
import math
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import engine_env, set_key
from dlpipe import config
from dlpipe.config import MAX_PARAMS_BYTES, MAX_PARAMS_VALUES, load_params
from dlpipe.errors import PipelineError

REPO = Path(__file__).resolve().parents[1]
TEXT = (REPO / "params.yaml").read_text()
RAW = yaml.safe_load(TEXT)
MESSAGE_CHARS = 300  # the longest message a generated case may give (the file is p.yaml)
DEFAULT_CASES = 300  # DLPIPE_PARAMS_CASES=all (or a number) for more; make test-slow runs all


def refused(tmp_path: Path, text: str) -> str:
    """The one message load_params gives for ``text``, from the file p.yaml in tmp_path."""
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(PipelineError) as info:
        load_params(tmp_path / "p.yaml")
    message = str(info.value)
    assert "\n" not in message and len(message) < MESSAGE_CHARS, message
    return message


def with_value(dotted: str, value) -> str:
    raw = copy.deepcopy(RAW)
    set_key(raw, dotted, value)
    return yaml.safe_dump(raw, sort_keys=False)


def replace_once(old: str, new: str) -> str:
    assert TEXT.count(old) == 1, old
    return TEXT.replace(old, new)


def laughs(levels: int = 9, width: int = 10) -> str:
    """The "billion laughs": each level a list of ``width`` aliases of the one before."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- one case each


@pytest.mark.parametrize(("dotted", "value", "spelt"), [
    ("houses.train.optimizer.weight_decay", math.nan, ".nan"),
    ("houses.train.optimizer.weight_decay", math.inf, ".inf"),
    ("houses.train.min_delta", -math.inf, "-.inf"),
    ("houses.train.lr", math.nan, ".nan"),  # a number or 'auto'
    ("houses.model.hidden", [64, math.inf], ".inf"),
    ("dcgan.train.ema_decay", math.nan, ".nan"),  # NaN compares False with both its bounds
])
def test_a_non_finite_number_is_refused_naming_the_key(tmp_path, dotted, value, spelt):
    message = refused(tmp_path, with_value(dotted, value))
    where = dotted + (".1" if isinstance(value, list) else "")
    assert message == f"{tmp_path / 'p.yaml'}: '{where}': expected a finite number, got {spelt}"


@pytest.mark.parametrize(("dotted", "value", "fragment"), [
    ("seed", 2**32, "4294967296 is greater than the maximum of 4294967295"),
    ("seed", -1, "-1 is less than the minimum of 0"),
    ("houses.prepare.split_seed", 10**30, "expected an integer from 0 to 4294967295"),
    ("houses.model.hidden", [64, 65_537], "65537 is greater than the maximum of 65536; expected a layer width"),
    ("lenet.model.channels", [6, 100_000], "expected a layer width, 1 to 65536 units"),
    ("dcgan.model.ngf", 65_537, "generator width"),
    ("houses.train.batch_size", 65_537, "expected samples per batch, 1 to 65536"),
    ("houses.train.epochs", 100_001, "expected a number of epochs, 1 to 100000"),
    ("houses.train.epochs", 30.0, "30.0 is not of type 'integer'"),  # range() takes no float
    ("dcgan.evaluate.class_samples", 20_001, "1 to 20000"),
])
def test_a_value_the_code_cannot_take_is_refused_with_its_bound(tmp_path, dotted, value, fragment):
    message = refused(tmp_path, with_value(dotted, value))
    assert f"'{dotted}" in message and fragment in message, message


EPOCHS = "    batch_size: 64\n    epochs: 300\n"  # houses.train's lines


def added_line(old: str, new: str) -> int:
    """The line number, in params.yaml with ``old`` replaced by ``new``, of the first line that
    differs: computed from the file, so editing params.yaml moves it with the text."""
    head = TEXT[:TEXT.index(old)].count("\n")
    k = next(i for i, (a, b) in enumerate(zip(old.split("\n"), new.split("\n"))) if a != b)
    return head + k + 1


def test_the_bounds_themselves_load(tmp_path):
    raw = copy.deepcopy(RAW)
    for dotted, value in {"seed": 2**32 - 1, "houses.model.hidden": [65_536, 1], "houses.train.epochs": 100_000,
                          "houses.train.batch_size": 65_536, "dcgan.feature_net.seed": 0}.items():
        set_key(raw, dotted, value)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(tmp_path / "p.yaml")
    assert params.seed == 2**32 - 1 and params.houses.model.hidden == (65_536, 1)


@pytest.mark.parametrize(("old", "new", "where", "kind"), [
    ("\nseed: 42\n", "\nseed: 42\n1: one\n", "'1': the key 1 at line 9, column 1", "an integer"),
    ("    batch_size: 64\n    epochs: 300\n", "    batch_size: 64\n    true: 1\n    epochs: 300\n",
     "'houses.train.true': the key true at line {line}, column 5", "a boolean"),
    ("  fetch_houses: 1\n", "  fetch_houses: 1\n  0: 1\n", "'threads.0': the key 0 at line 19, column 3", "an integer"),
    ("\nseed: 42\n", "\nseed: 42\n~: x\n", "'~': the key ~ at line 9, column 1", "null"),
])
def test_a_key_that_is_not_a_string_is_refused_naming_it(tmp_path, old, new, where, kind):
    message = refused(tmp_path, replace_once(old, new))
    where = where.format(line=added_line(old, new))
    assert f"{tmp_path / 'p.yaml'}: {where} is read as {kind}, not a string" in message, message
    assert "expected string keys only" in message


def test_a_list_as_a_key_is_refused(tmp_path):
    message = refused(tmp_path, replace_once("\nseed: 42\n", "\nseed: 42\n? [a, b]\n: x\n"))
    assert "'<top level>': a sequence is a key at line 9, column 3" in message, message


# at, first: the lines of the duplicate and of the first one, counted from the added line
@pytest.mark.parametrize(("old", "new", "key", "at", "first"), [
    ("    batch_size: 64\n    epochs: 300\n", "    batch_size: 64\n    epochs: 300\n    epochs: 30\n",
     "houses.train.epochs", 0, -1),
    ("\nseed: 42\n", "\nseed: 42\nseed: 1\n", "seed", 0, -1),
    ("      train.csv: 1e18", "      test.csv: x\n      train.csv: 1e18", "houses.data.sha256.test.csv", 2, 0),
])
def test_a_duplicate_key_is_refused_naming_it_and_both_lines(tmp_path, old, new, key, at, first):
    added = added_line(old, new)
    line, first = added + at, added + first
    message = refused(tmp_path, replace_once(old, new))
    assert message.startswith(f"{tmp_path / 'p.yaml'}: '{key}': duplicate key at line {line}, column "), message
    assert message.endswith(f" (first at line {first}); expected each key once in a mapping"), message


def test_a_merge_key_is_no_duplicate(tmp_path):
    text = replace_once("\n  amp: false ", "\n  <<: {amp: true}\n  amp: false ")
    (tmp_path / "p.yaml").write_text(text)
    assert load_params(tmp_path / "p.yaml").accel.amp is False


@pytest.mark.parametrize("text", [laughs(), TEXT + laughs(), "a: &a [*a]\n", TEXT + laughs(12, 3)],
                         ids=["billion-laughs", "laughs-after-params", "self-reference", "three-wide"])
def test_an_alias_bomb_is_refused_fast(tmp_path, text):
    start = time.perf_counter()
    message = refused(tmp_path, text)
    elapsed = time.perf_counter() - start
    assert f"more than {MAX_PARAMS_VALUES} values once its YAML aliases (*name) are expanded" in message
    assert elapsed < 5, elapsed  # about 0.05 s: nothing walks the 10**9 values


def test_aliases_within_the_cap_load(tmp_path):
    text = replace_once("# auto = suggestion of lr_find_houses, or a number\n"
                        "    optimizer:              # name: adam | adamw | sgd (sgd also takes momentum)\n",
                        "\n    optimizer: &adam\n")
    text = text.replace("      optimizer: {name: adam, weight_decay: 1.0e-4}", "      optimizer: *adam")
    (tmp_path / "p.yaml").write_text(text)
    params = load_params(tmp_path / "p.yaml")
    assert params.transfer.head.train.optimizer == params.houses.train.optimizer


@pytest.mark.parametrize("text", ["a: [" + ", ".join(["1"] * 100_000) + "]\n",
                                  "a: " + "[" * 3000 + "]" * 3000 + "\n"], ids=["many-values", "deep"])
def test_a_long_or_deep_document_is_refused_fast(tmp_path, text):
    start = time.perf_counter()
    message = refused(tmp_path, text)
    assert "more than 20000 values" in message or "nested too deeply" in message, message
    assert time.perf_counter() - start < 5


def test_a_params_file_over_the_size_cap_is_refused_unread(tmp_path):
    text = TEXT + "# " + "x" * MAX_PARAMS_BYTES + "\n"
    message = refused(tmp_path, text)
    assert message == (f"{tmp_path / 'p.yaml'}: the params file is larger than 1 MiB; expected a params file "
                       "(params.yaml is about 14 KiB)")


@pytest.mark.parametrize(("dotted", "value"), [("device", "x" * 500_000), ("device", {"a": list(range(5_000))}),
                                              ("houses.data.pypi_package", "y" * 100_000)])
def test_a_message_quotes_only_the_start_of_a_long_value(tmp_path, dotted, value):
    message = refused(tmp_path, with_value(dotted, value))
    assert f"'{dotted}'" in message and "..." in message, message


def test_an_unknown_key_that_is_long_is_quoted_short(tmp_path):
    long = "k" * 1000  # YAML's longest plain key is 1024 characters
    message = refused(tmp_path, replace_once("\nseed: 42\n", f"\nseed: 42\n{long}: 1\n"))
    assert "unknown key 'kkkk" in message and "...'" in message, message


def test_a_control_character_is_one_line(tmp_path):
    message = refused(tmp_path, replace_once("\nseed: 42\n", "\nseed: 42\x00\n"))
    assert "not valid YAML: unacceptable character #x0000" in message


def test_python_tags_are_refused(tmp_path):
    message = refused(tmp_path, replace_once("\nseed: 42\n", "\nseed: !!python/object/apply:os.getpid []\n"))
    assert "not valid YAML: could not determine a constructor for the tag" in message and "line 8" in message


# --------------------------------------------------------------------------- through the CLI


@pytest.mark.parametrize(("text", "fragment"), [
    (with_value("houses.train.optimizer.weight_decay", math.nan),
     "'houses.train.optimizer.weight_decay': expected a finite number, got .nan"),
    (replace_once("    batch_size: 64\n    epochs: 300\n", "    batch_size: 64\n    epochs: 300\n    epochs: 3\n"),
     "'houses.train.epochs': duplicate key at line %d" % added_line(EPOCHS, EPOCHS + "    epochs: 3\n")),
    (replace_once("\nseed: 42\n", "\nseed: 42\n1: one\n"), "'1': the key 1 at line 9, column 1 is read as an integer"),
    (TEXT + laughs(), "values once its YAML aliases (*name) are expanded"),
], ids=["nan", "duplicate", "int-key", "billion-laughs"])
def test_cli_exits_2_with_one_error_line(tmp_path, text, fragment):
    (tmp_path / "bad.yaml").write_text(text)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dlpipe", "train_houses", "--params", "bad.yaml"], cwd=tmp_path,
                          env=engine_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: bad.yaml: "), proc.stderr
    assert fragment in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # refused before any work
    assert time.perf_counter() - start < 60


# --------------------------------------------------------------------------- generated from the schema's edges


@dataclass(frozen=True)
class Generated:
    id: str  # kind:dotted.key
    edit: tuple  # ("set", path, value) | ("remove", path) | ("duplicate", path) | ("not-a-string", path, key)
    valid: bool | None  # what the schema says (None: either; a changed tag changes the keys that apply)
    names: str  # what a refusal must say: the key, dotted, at least

    def text(self) -> str:
        """The real params.yaml with this case's one edit (built only for the cases that run)."""
        how, path, *arg = self.edit
        if how in ("duplicate", "not-a-string"):
            return _edit_key(path, how, *arg)
        raw = copy.deepcopy(RAW)
        node = raw
        for part in path[:-1]:
            node = node[part]
        if how == "remove":
            del node[path[-1]]
        else:
            node[path[-1]] = arg[0]
        return yaml.dump(raw, Dumper=yaml.CSafeDumper, sort_keys=False)


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _applied(schema: dict, value) -> dict:
    """The branch of a tagged union (allOf of if/then) that ``value`` picks, merged in."""
    if isinstance(value, dict):
        for branch in schema.get("allOf", []):
            tag, allowed = next(iter(branch["if"]["properties"].items()))
            if value.get(tag) in allowed["enum"]:
                # The tag keeps the union's enum of every variant's names.
                return {**schema, **branch["then"], "properties": {**branch["then"]["properties"],
                                                                   **schema.get("properties", {})}}
    return schema


def walk(schema: dict, value, path: tuple = (), parent: dict | None = None):
    """(path, its schema, its parent's schema) for every value of the real params."""
    schema = _applied(schema, value)
    yield path, schema, parent
    if isinstance(value, dict):
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            sub = schema.get("properties", {}).get(name, extra if isinstance(extra, dict) else {})
            yield from walk(sub, item, path + (name,), schema)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from walk(schema["items"], item, path + (index,), schema)


def _types(schema: dict) -> set:
    return {schema.get("type")} | {branch.get("type") for branch in schema.get("oneOf", [])}


def number_edges(schema: dict, integer: bool):
    """(label, value, valid): at and just past each bound, far out where there is none,
    the non-finite floats and the wrong types."""
    def step(x, toward):
        return x + (1 if toward > x else -1) if integer else math.nextafter(x, toward)

    for side, inclusive, exclusive, outward in (("min", "minimum", "exclusiveMinimum", -math.inf),
                                                ("max", "maximum", "exclusiveMaximum", math.inf)):
        if inclusive in schema:
            yield f"at-{side}", schema[inclusive], True
            yield f"past-{side}", step(schema[inclusive], outward), False
        elif exclusive in schema:
            yield f"at-{side}", schema[exclusive], False
            yield f"inside-{side}", step(schema[exclusive], -outward), True
        else:
            yield f"far-{side}", (10**30 if integer else 1.0e300) * (1 if outward > 0 else -1), True
    for label, value in (("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf)):
        yield label, value, False
    yield "text", "x", False
    yield "bool", True, False
    if integer:
        yield "float", 2.0, False  # integral, still no int


def _edit_key(path: tuple, how: str, key: str = "") -> str:
    """The real params with the key at ``path`` given twice, or replaced by the plain
    scalar ``key`` (1, true, null...: YAML reads no string)."""
    root = yaml.compose(yaml.dump(RAW, Dumper=yaml.CSafeDumper, sort_keys=False), Loader=yaml.CSafeLoader)
    node = root
    for part in path[:-1]:
        node = next(v for k, v in node.value if k.value == part)
    at = next(i for i, (k, _) in enumerate(node.value) if k.value == path[-1])
    name, value = node.value[at]
    if how == "duplicate":
        node.value.insert(at + 1, (copy.deepcopy(name), copy.deepcopy(value)))
    else:
        tag = {"1": "int", "0": "int", "true": "bool", "null": "null", "1.5": "float"}[key]
        node.value[at] = (yaml.ScalarNode(f"tag:yaml.org,2002:{tag}", key), value)
    return yaml.serialize(root, Dumper=yaml.CSafeDumper)


NOT_STRINGS = ("1", "true", "null", "0", "1.5")


def generated_cases() -> list[Generated]:
    """Every edge of every value of the real params.yaml, from the schema (config.schema())."""
    cases = []
    for index, (path, schema, parent) in enumerate(walk(config.schema(), RAW)):
        dotted, types = _dotted(path), _types(schema)

        def case(kind, edit, valid, names=f"'{dotted}'"):
            cases.append(Generated(f"{kind}:{dotted}", edit, valid, names))

        if types & {"number", "integer"}:
            for label, value, valid in number_edges(schema, "number" not in types):
                finite = not isinstance(value, float) or math.isfinite(value)
                case(label, ("set", path, value), valid,
                     f"'{dotted}'" if finite else f"'{dotted}': expected a finite number, got")
        elif "enum" in schema:
            is_tag = parent is not None and "allOf" in parent and path[-1] in parent.get("required", [])
            for member in schema["enum"]:
                case(f"enum-{member}", ("set", path, member), None if is_tag else True)
            case("enum-none", ("set", path, "not-one-of-them"), False)
        elif "boolean" in types:
            case("bool-as-int", ("set", path, 1), False)
            case("bool-as-text", ("set", path, "yes please"), False)
        elif "string" in types:
            case("str-as-int", ("set", path, 5), False)
            case("str-long", ("set", path, "x" * 10_000), "pattern" not in schema)
        elif "array" in types:
            case("array-empty", ("set", path, []), schema.get("minItems", 0) == 0)
            if "maxItems" in schema:
                case("array-long", ("set", path, [1] * (schema["maxItems"] + 1)), False)
            case("array-as-text", ("set", path, "1, 2"), False)
        if "object" in types or schema.get("properties"):
            open_ended = isinstance(schema.get("additionalProperties"), dict)  # threads: any stage name here
            case("unknown-in", ("set", path + ("zz_unknown",), 1), open_ended, "zz_unknown")
            if path:
                case("object-as-text", ("set", path, "x"), False)
        if path and isinstance(path[-1], str):  # a key of a mapping
            required = path[-1] in parent.get("required", [])
            case("removed", ("remove", path), not required, f"'{path[-1]}' is a required property")
            case("duplicated", ("duplicate", path), False, f"'{dotted}': duplicate key at line")
            key = NOT_STRINGS[index % len(NOT_STRINGS)]
            case("non-string-key", ("not-a-string", path, key), False,
                 f"'{_dotted(path[:-1] + (key,))}': the key {key} at line")
    return cases


def pick(cases: list[Generated], count: int | None, seed: int) -> list[Generated]:
    """``count`` cases drawn with ``seed``, round robin over the kinds so that every kind is
    among them; all of them for None."""
    if count is None or count >= len(cases):
        return cases
    rng = random.Random(seed)
    kinds: dict[str, list[Generated]] = {}
    for case in cases:
        kinds.setdefault(case.id.split(":")[0], []).append(case)
    for group in kinds.values():
        rng.shuffle(group)
    picked, round_ = [], 0
    while len(picked) < count:
        for group in kinds.values():
            if round_ < len(group) and len(picked) < count:
                picked.append(group[round_])
        round_ += 1
    return picked


def check(cases: list[Generated]) -> list[str]:
    """Load each case from p.yaml in the working folder (a short name: the messages'
    length is their own); the failures, in words."""
    failures = []
    for case in cases:
        Path("p.yaml").write_text(case.text())
        try:
            load_params("p.yaml")
            message = None
        except PipelineError as exc:
            message = str(exc)
        except Exception as exc:  # noqa: BLE001 - the property: no other exception, ever
            failures.append(f"{case.id}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        if message is None:
            if case.valid is False:
                failures.append(f"{case.id}: loaded, but the schema refuses it")
            continue
        if case.valid is True:
            failures.append(f"{case.id}: refused, but the schema takes it: {message}")
        if "\n" in message or len(message) >= MESSAGE_CHARS or not message.startswith("p.yaml: "):
            failures.append(f"{case.id}: not one short line naming the file: {message[:400]!r}")
        if case.valid is False and case.names not in message:
            failures.append(f"{case.id}: the message does not name {case.names!r}: {message}")
    return failures


def _count() -> int | None:
    wanted = os.environ.get("DLPIPE_PARAMS_CASES", str(DEFAULT_CASES))
    return None if wanted == "all" else int(wanted)


def test_the_generator_covers_every_key_and_kind():
    cases = generated_cases()
    kinds = {case.id.split(":")[0] for case in cases}
    assert {"at-min", "past-min", "nan", "inf", "-inf", "text", "float", "removed", "duplicated",
            "non-string-key", "unknown-in", "str-long", "enum-none", "array-empty"} <= kinds, kinds
    numbers = {case.id.split(":")[1] for case in cases if case.id.startswith("nan:")}
    assert {"seed", "houses.train.optimizer.weight_decay", "houses.model.hidden.0", "threads.fetch_houses",
            "dcgan.train.ema_decay", "transfer.augment.crop_scale.1"} <= numbers
    assert len(numbers) > 100 and len(cases) > 2000


def test_generated_edge_documents_load_or_give_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = pick(generated_cases(), _count(), int(os.environ.get("DLPIPE_PARAMS_SEED", "0")))
    start = time.perf_counter()
    failures = check(cases)
    print(f"\n[params edges] {len(cases)} generated cases in {time.perf_counter() - start:.1f} s")
    assert not failures, f"{len(failures)} of {len(cases)} failed:\n" + "\n".join(failures[:20])


@pytest.mark.slow  # every generated case (about 2,200; 80 s on 2 busy cores): make test-slow
def test_every_generated_edge_document(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = generated_cases()
    start = time.perf_counter()
    failures = check(cases)
    print(f"\n[params edges] all {len(cases)} generated cases in {time.perf_counter() - start:.1f} s")
    assert not failures, f"{len(failures)} of {len(cases)} failed:\n" + "\n".join(failures[:20])
