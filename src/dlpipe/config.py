"""Load params.yaml, validate it against the project's JSON Schema, freeze it.

The schema (workflow/schemas/params.schema.yaml) is the same file Snakemake's
``validate`` uses, so both engines and the stages refuse the same inputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

from dlpipe.errors import PipelineError

SCHEMA_RELPATH = Path("workflow/schemas/params.schema.yaml")


@dataclass(frozen=True)
class HousesData:
    source: str
    pypi_package: str
    pypi_member_dir: str
    folder: str
    kaggle_competition: str
    sha256: dict[str, str]


@dataclass(frozen=True)
class HousesPrepare:
    val_fraction: float
    split_seed: int
    drop_outliers: bool
    outlier_min_living_area: float
    skew_threshold: float


@dataclass(frozen=True)
class ClassifierData:
    name: str  # digits | cifar10
    cifar10_url: str
    cifar10_md5: str


@dataclass(frozen=True)
class ClassifierPrepare:
    val_fraction: float
    test_fraction: float  # digits only: CIFAR-10 has its official test batch
    split_seed: int


@dataclass(frozen=True)
class LRFind:
    start_lr: float
    end_lr: float
    num_iter: int
    step_mode: str
    smooth: float
    diverge_threshold: float
    rule: str


@dataclass(frozen=True)
class Train:
    lr: float | str
    optimizer: str
    weight_decay: float
    batch_size: int
    epochs: int
    schedule: str
    patience: int
    min_delta: float
    momentum: float = 0.9
    step_size: int = 30
    gamma: float = 0.1
    max_batches: int | None = None


@dataclass(frozen=True)
class MLPModel:
    hidden: tuple[int, ...]


@dataclass(frozen=True)
class HousesModel:
    model: MLPModel
    train: Train


@dataclass(frozen=True)
class LeNetArch:
    channels: tuple[int, ...]  # the two conv layers' widths (seed: 6, 16)
    hidden: tuple[int, ...]  # the two hidden fully connected widths (seed: 120, 84)


@dataclass(frozen=True)
class Augment:
    crop_padding: int  # random crop of the image padded by this many pixels; 0 = off
    flip: bool | str  # horizontal flip: true | false | auto (on for cifar10, off for digits)


@dataclass(frozen=True)
class LeNetModel:
    model: LeNetArch
    augment: Augment
    train: Train


@dataclass(frozen=True)
class TransferData:
    name: str  # faces | hymenoptera
    faces_val_fraction: float  # faces: share of each class written to val/
    split_seed: int
    hymenoptera_url: str
    hymenoptera_md5: str  # "" = not pinned: the download is not checked


@dataclass(frozen=True)
class TransferPrepare:
    max_side: int  # longer image sides are shrunk to this many pixels when decoded


@dataclass(frozen=True)
class TransferWeights:
    weights: str  # imagenet | none | pipeline | <path of a state_dict file>


@dataclass(frozen=True)
class TransferAugment:
    image_size: int  # side of the square crops the network sees
    crop_scale: tuple[float, float]  # RandomResizedCrop's area share range
    crop_ratio: tuple[float, float]  # RandomResizedCrop's aspect ratio range
    flip: bool  # RandomHorizontalFlip
    crop_fraction: float  # validation: Resize(image_size / crop_fraction) + CenterCrop(image_size)


@dataclass(frozen=True)
class TransferPretrain:
    image_size: int
    crop_scale: tuple[float, float]
    train: Train


@dataclass(frozen=True)
class TransferHead:
    train: Train


@dataclass(frozen=True)
class TransferFinetune:
    lr_spread: float  # the first layer group's LR is the last one's divided by this
    train: Train  # lr: auto | head_div_10 | a number (the last group's, fc)


@dataclass(frozen=True)
class TransferModel:
    model: TransferWeights
    augment: TransferAugment
    pretrain: TransferPretrain
    head: TransferHead
    finetune: TransferFinetune


@dataclass(frozen=True)
class GanData:
    name: str  # digits | cifar10 (the prepared classifier images) | folder (an ImageFolder of pictures)
    folder: str  # name: folder -> the folder's path
    max_images: int  # name: folder -> at most this many images, a seeded sample; 0 = all


@dataclass(frozen=True)
class DCGANArch:
    nz: int  # size of the noise vector
    ngf: int  # generator width (channels of its last hidden layer)
    ndf: int  # discriminator width (channels of its first layer)
    nc: int  # image channels: 1 (grey) or 3 (colour)


@dataclass(frozen=True)
class DCGANTrain:
    epochs: int
    batch_size: int
    lr: float
    beta1: float
    beta2: float
    grid_images: int  # fixed noise vectors drawn into every epoch's sample grid
    collapse_threshold: float  # D(G(z)) below this: the discriminator wins completely
    collapse_patience: int  # that many consecutive such steps are reported as a collapse
    ema_decay: float  # weight of the old average in the generator's EMA per step; 0 = no EMA
    translation: float  # DiffAugment: largest shift of what D sees, as a fraction of the side; 0 = off
    cutout: float  # DiffAugment: side of the background square cut from what D sees, fraction of the side; 0 = off
    r1_gamma: float  # weight of the R1 gradient penalty on real images in D's loss; 0 = off (the seed's step)
    r1_interval: int  # the penalty on every this-many-th D step, times this many (lazy R1); 1 = every step
    max_batches: int | None = None


@dataclass(frozen=True)
class DCGANEvaluate:
    fid_max_samples: int  # cap on N, the size of each FID sample
    class_samples: int  # generated images whose LeNet classes give min_class_share
    inception_fid: bool  # also torchmetrics' Inception FID, only with locally present weights


@dataclass(frozen=True)
class FeatureNet:
    """The LeNet of the DCGAN's metrics (train_fid_lenet): its own seed and recipe,
    so that no other experiment's knob moves the FID's feature space."""

    seed: int
    model: LeNetArch
    augment: Augment
    train: Train


@dataclass(frozen=True)
class DCGANModel:
    image_size: int  # 32 | 64; the networks' depth follows it
    model: DCGANArch
    train: DCGANTrain
    evaluate: DCGANEvaluate
    feature_net: FeatureNet


@dataclass(frozen=True)
class Data:
    houses: HousesData
    classifier: ClassifierData
    transfer: TransferData
    gan: GanData


@dataclass(frozen=True)
class Prepare:
    houses: HousesPrepare
    classifier: ClassifierPrepare
    transfer: TransferPrepare


@dataclass(frozen=True)
class LRFindSection:
    houses: LRFind
    lenet: LRFind
    transfer_head: LRFind
    transfer_finetune: LRFind


@dataclass(frozen=True)
class Accel:
    amp: bool
    channels_last: bool
    compile: bool


@dataclass(frozen=True)
class Params:
    seed: int
    device: str
    threads: dict[str, int]  # torch threads per stage name (dlpipe.workflow_graph.stage_threads)
    accel: Accel
    data: Data
    prepare: Prepare
    lr_find: LRFindSection
    houses: HousesModel
    lenet: LeNetModel
    transfer: TransferModel
    dcgan: DCGANModel
    raw: dict = dataclasses.field(repr=False, compare=False, default_factory=dict)

    def section_hash(self, *keys: str) -> str:
        """sha256 of the named dotted sections, for checkpoint identity."""
        picked = {}
        for key in keys:
            node = self.raw
            for part in key.split("."):
                node = node[part]
            picked[key] = node
        blob = json.dumps(picked, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()


def _error_message(source: str, error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - allowed)
        key = ".".join(filter(None, [path, unknown[0] if unknown else ""]))
        return f"{source}: unknown key '{key}' (allowed here: {', '.join(sorted(allowed))})"
    if error.validator == "required":
        return f"{source}: {error.message} in '{path or '<top level>'}'"
    expected = error.schema.get("description")
    if not expected and error.parent is not None and isinstance(error.parent.schema, dict):
        expected = error.parent.schema.get("description")  # one branch of a oneOf: what the key takes
    message = f"{source}: '{path}': {error.message}"
    if expected:
        message += f"; expected {expected}"
    return message


def load_schema(schema_path: Path) -> dict:
    try:
        return yaml.safe_load(schema_path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"params schema not found: {schema_path}") from None


def validate_raw(raw: object, schema: dict, source: str = "params.yaml") -> None:
    """Raise PipelineError naming the first offending key, if any."""
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(raw))
    if error is not None:
        raise PipelineError(_error_message(source, error))


def _build(cls, value):
    """Turn validated plain data into the (nested) frozen dataclass ``cls``."""
    origin = typing.get_origin(cls)
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        kwargs = {
            f.name: _build(hints[f.name], value[f.name])
            for f in dataclasses.fields(cls)
            if f.name in value and f.name != "raw"
        }
        return cls(**kwargs)
    if origin is tuple:
        return tuple(value)
    if origin in (typing.Union, types.UnionType):
        return value
    if cls is float and isinstance(value, int):
        return float(value)
    return value


def load_params(path: str | Path = "params.yaml", schema_path: str | Path | None = None) -> Params:
    """Read, validate and freeze params; the schema sits beside params.yaml by default."""
    path = Path(path)
    schema_path = Path(schema_path) if schema_path else path.resolve().parent / SCHEMA_RELPATH
    try:
        raw = yaml.safe_load(path.read_text())
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
    validate_raw(raw, load_schema(schema_path), source=str(path))
    params = _build(Params, raw)
    return dataclasses.replace(params, raw=raw)
