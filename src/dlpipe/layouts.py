"""What each file passed between stages holds, declared once beside the code that
writes it, and checked both by that writer and by every reader.

No stage trusts a file another stage wrote: a stale, hand-edited or damaged file (a
float tensor where uint8 images belong, a dict without its key, an LR record with a
negative LR, a metrics file that is a list) is refused when it is read, with one
line that names the file, what is wrong and the stage to rerun, before any work
starts. The writer checks what it writes against the same declaration, so the
declaration cannot drift from the files.

Three kinds of file:

- ``TensorFile``: a dict of tensors (``torch.save``). Each tensor has a dtype and a
  shape whose sizes are numbers (fixed) or names (``"N"``: the same size wherever the
  name appears in the file, and equal to a size the reader knows, when it passes one);
  floats must be finite, and values may be bounded (labels from 0) or unique (Ids).
- ``JsonFile``: a JSON document checked against a JSON Schema (every number finite).
- ``CsvFile``: a table with required columns, each numeric or text, and at least one row.

``pattern`` is where the file lies (a glob relative to the repository): the tests
find every declared file of a finished run by it and corrupt each one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import jsonschema
import numpy as np
import pandas as pd
import torch

from dlpipe.errors import PipelineError, excerpt
from dlpipe.io import read_json_document, write_json, write_text
from dlpipe.schema import error_message, strict_validator
from dlpipe.tensor_io import load_tensors, save_tensors

FLOAT = "float"  # any floating dtype: float16, bfloat16, float32, float64
_DTYPES = {"uint8": torch.uint8, "int64": torch.int64, "bool": torch.bool}


@dataclass(frozen=True)
class Tensor:
    dtype: str  # "uint8", "int64", "bool" or FLOAT
    shape: tuple[int | str, ...]  # a number: that size; a name: a size shared within the file
    min: float | None = None  # smallest value allowed (labels: 0)
    max: float | None = None
    below: str | None = None  # values under a size the reader passes by this name (labels: "classes")
    unique: bool = False  # no value twice (row Ids)

    def describe(self) -> str:
        return f"{'float' if self.dtype == FLOAT else self.dtype} {' x '.join(map(str, self.shape)) or 'scalar'}"

    def problem(self, value: object, sizes: dict[str, int]) -> str | None:
        """What is wrong with ``value`` (None: nothing); binds the shape's names into ``sizes``."""
        if not isinstance(value, torch.Tensor):
            return f"expected a tensor ({self.describe()}), got {type(value).__name__}"
        dtype_ok = value.is_floating_point() if self.dtype == FLOAT else value.dtype == _DTYPES[self.dtype]
        got = f"{str(value.dtype).removeprefix('torch.')} {' x '.join(map(str, value.shape)) or 'scalar'}"
        if not dtype_ok or value.dim() != len(self.shape):
            return f"expected {self.describe()}, got {got}"
        for axis, (want, size) in enumerate(zip(self.shape, value.shape)):
            if isinstance(want, str):
                want = sizes.setdefault(want, size)
            if size != want:
                return f"expected {self.describe()} with {self.shape[axis]} = {want}, got {got}"
        if value.numel() == 0:
            return f"expected {self.describe()}, got an empty tensor"
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return f"holds {int((~torch.isfinite(value)).sum())} NaN or infinite value(s)"
        if self.min is not None and value.dtype != torch.bool and float(value.min()) < self.min:
            return f"holds {float(value.min()):g}, below the smallest allowed, {self.min:g}"
        if self.max is not None and value.dtype != torch.bool and float(value.max()) > self.max:
            return f"holds {float(value.max()):g}, above the largest allowed, {self.max:g}"
        if self.below is not None and self.below in sizes and float(value.max()) >= sizes[self.below]:
            return f"holds {float(value.max()):g}; expected values under {self.below} = {sizes[self.below]}"
        if self.unique and len(torch.unique(value)) != len(value):
            return f"holds {len(value) - len(torch.unique(value))} repeated value(s); expected each once"
        return None


@dataclass(frozen=True)
class TensorFile:
    """A dict of exactly these tensors, written by stage ``producer``."""

    producer: str
    pattern: str
    tensors: Mapping[str, Tensor]

    def check(self, path: str | Path, tensors: object, **sizes: int) -> dict[str, torch.Tensor]:
        if not isinstance(tensors, dict):
            self._refuse(path, f"expected a dict of tensors ({', '.join(self.tensors)}), got {type(tensors).__name__}")
        missing = [name for name in self.tensors if name not in tensors]
        unknown = [str(name) for name in tensors if name not in self.tensors]
        if missing or unknown:
            what = f"no {missing[0]!r}" if missing else f"an unknown key {excerpt(unknown[0])!r}"
            self._refuse(path, f"{what}; expected the keys {', '.join(self.tensors)}")
        bound = dict(sizes)
        for name, spec in self.tensors.items():
            problem = spec.problem(tensors[name], bound)
            if problem:
                self._refuse(path, f"'{name}': {problem}")
        return tensors

    def save(self, path: str | Path, tensors: dict[str, torch.Tensor], **sizes: int) -> None:
        # Only the declared tensors are written (a caller's dict may hold more, such as names).
        chosen = {name: tensors[name] for name in self.tensors if name in tensors}
        self.check(path, chosen, **sizes)
        save_tensors(path, {name: value.contiguous() for name, value in chosen.items()})

    def load(self, path: str | Path, device: torch.device | str = "cpu", **sizes: int) -> dict[str, torch.Tensor]:
        tensors = self.check(path, load_tensors(path, self.producer), **sizes)
        return {name: value.to(device) for name, value in tensors.items()}

    def _refuse(self, path, what: str) -> None:
        raise PipelineError(f"{path}: {what}; rerun {self.producer}")


@dataclass(frozen=True)
class JsonFile:
    """A JSON document that ``schema`` accepts, written by stage ``producer``."""

    producer: str
    pattern: str
    schema: Mapping = field(hash=False)

    def check(self, path: str | Path, record: object):
        error = jsonschema.exceptions.best_match(strict_validator(dict(self.schema)).iter_errors(record))
        if error is not None:
            raise PipelineError(f"{error_message(str(path), error)}; rerun {self.producer}")
        return record

    def write(self, path: str | Path, record) -> None:
        write_json(path, self.check(path, record))

    def read(self, path: str | Path):
        return self.check(path, read_json_document(path, self.producer))


@dataclass(frozen=True)
class CsvFile:
    """A table with at least these columns ("number" or "text") and ``min_rows`` rows, written by ``producer``."""

    producer: str
    pattern: str
    columns: Mapping[str, str]
    min_rows: int = 1

    def check(self, path: str | Path, frame: pd.DataFrame) -> pd.DataFrame:
        for name, kind in self.columns.items():
            if name not in frame:
                self._refuse(path, f"no column {name!r}; expected the columns {', '.join(self.columns)}")
            if kind == "number":
                values = pd.to_numeric(frame[name], errors="coerce").astype(float)
                bad = frame[name][~np.isfinite(values.to_numpy())]
                if len(bad):
                    self._refuse(path, f"column {name!r} holds {excerpt(repr(bad.iloc[0]))}; expected finite numbers")
        if len(frame) < self.min_rows:
            self._refuse(path, f"{len(frame)} rows; expected at least {self.min_rows}")
        return frame

    def write(self, path: str | Path, frame: pd.DataFrame, **to_csv) -> None:
        write_text(path, self.check(path, frame).to_csv(index=False, **to_csv))

    def read(self, path: str | Path, **read_csv) -> pd.DataFrame:
        path = Path(path)
        if not path.is_file():
            raise PipelineError(f"{path}: not found; run {self.producer} first")
        try:
            frame = pd.read_csv(path, **read_csv)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
            self._refuse(path, f"not a readable table ({type(exc).__name__}: {excerpt(str(exc).splitlines()[0])})")
        return self.check(path, frame)

    def _refuse(self, path, what: str) -> None:
        raise PipelineError(f"{path}: {what}; rerun {self.producer}")


# Schema pieces for JsonFile declarations.
NUMBER = {"type": "number"}
POSITIVE = {"type": "number", "exclusiveMinimum": 0}
COUNT = {"type": "integer", "minimum": 0}
TEXT = {"type": "string"}


# A model's metrics: its DVC metrics file (headline numbers) and its details file (every number,
# and notes), both JSON objects.
NUMBERS = {"type": "object", "minProperties": 1, "additionalProperties": {"type": "number"}}
OBJECT = {"type": "object", "minProperties": 1}


def metrics_files(producer: str, metrics: Path, details: Path) -> tuple[JsonFile, JsonFile]:
    return (JsonFile(producer, Path(metrics).as_posix(), NUMBERS), JsonFile(producer, Path(details).as_posix(), OBJECT))


def record(required: Mapping[str, Mapping], **optional: Mapping) -> dict:
    """The schema of a JSON object with these keys (others allowed, as a record may grow)."""
    return {"type": "object", "required": list(required), "properties": {**required, **optional}}


def array(items: Mapping, min_items: int = 1) -> dict:
    return {"type": "array", "items": dict(items), "minItems": min_items}


Layout = TensorFile | JsonFile | CsvFile


@functools.lru_cache(maxsize=1)
def declared() -> list[Layout]:
    """Every layout the package declares: module-level constants (or dicts of them) of its
    modules, one per pattern. What the tests corrupt, and what the report reads by."""
    import importlib
    import pkgutil

    import dlpipe

    found: dict[str, Layout] = {}
    for info in pkgutil.walk_packages(dlpipe.__path__, "dlpipe."):
        if info.name.endswith("__main__"):
            continue
        for value in vars(importlib.import_module(info.name)).values():
            for item in value.values() if isinstance(value, dict) else (value,):
                if isinstance(item, (TensorFile, JsonFile, CsvFile)):
                    found.setdefault(item.pattern, item)
    return list(found.values())


def for_path(path: str | Path) -> Layout | None:
    """The declared layout of the file at ``path`` (relative to the repository), if any."""
    from fnmatch import fnmatchcase

    rel = Path(path).as_posix()
    matching = [item for item in declared() if fnmatchcase(rel, item.pattern)]
    return max(matching, key=lambda item: len(item.pattern), default=None)  # the most specific pattern
