"""What the transfer stages share: paths, loaders over the prepared images (the
seed's transforms as batch hooks), the ResNet18 of each stage and its LRs.

Every stage after the backbone's pretraining trains (or tests) twice, once per
entry of ``BACKBONES``: the backbone of ``transfer.model.weights`` and a random
one (``weights: none``), the baseline that says what the pretraining adds. Both
runs share the seed, the split, the new fc's initial weights, the batch order
and every params key; only the backbone differs. The random run's files are
the pretrained run's names with ``_random`` (``backbone_path``)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from dlpipe.config import Params, Train
from dlpipe.data.augment import EvalTransform
from dlpipe.data.loaders import TensorLoader
from dlpipe.data.transfer_augment import RandomResizedCropFlip, eval_crops, imagenet_normalize
from dlpipe.data.transfer_images import META_JSON, PREPARED_DIR, load_split
from dlpipe.errors import PipelineError
from dlpipe.models.resnet import ResNet18, group_lrs, load_backbone
from dlpipe.tensor_io import load_into
from dlpipe.training.lr_finder import resolve_lr

BACKBONE = Path("models/transfer_backbone.pt")
HEAD_WEIGHTS = Path("models/transfer_head.pt")
FINETUNE_WEIGHTS = Path("models/transfer_finetune.pt")
HEAD_LR_JSON = Path("reports/lr_find/transfer_head.json")
FINETUNE_LR_JSON = Path("reports/lr_find/transfer_finetune.json")
PLOTS = Path("reports/plots/transfer")
CHECKPOINTS = Path("checkpoints")
PREPARED_FILES = [PREPARED_DIR / "train.pt", PREPARED_DIR / "val.pt", PREPARED_DIR / META_JSON]
EVAL_BATCH = 256
BACKBONES = ("pretrained", "random")  # the chosen weights, then the baseline (weights: none)


def backbone_path(path: Path, backbone: str) -> Path:
    """The pretrained run's file or folder, or the random run's (``_random`` before the suffix)."""
    return path if backbone == "pretrained" else path.with_name(f"{path.stem}_random{path.suffix}")


def backbone_weights(params: Params, backbone: str) -> str:
    return params.transfer.model.weights if backbone == "pretrained" else "none"


def check_range(pair: Sequence[float], key: str) -> tuple[float, float]:
    low, high = pair
    if low > high:
        raise PipelineError(f"params.yaml: '{key}': [{low}, {high}] is not a range; expected [low, high] with low <= high")
    return float(low), float(high)


def augmenting_loader(images: torch.Tensor, sizes: torch.Tensor, labels: torch.Tensor, params: Params, cfg: Train,
                      size: int, scale_key: str, scale: Sequence[float], flip: bool, capped: bool) -> TensorLoader:
    """Shuffled training batches of RandomResizedCrop (+ flip) + Normalize; ``capped``
    applies ``max_batches`` (the LR range test counts its own steps)."""
    ratio = check_range(params.transfer.augment.crop_ratio, "transfer.augment.crop_ratio")
    transform = RandomResizedCropFlip(images, sizes, size, check_range(scale, scale_key), ratio, flip,
                                      imagenet_normalize(images.device))
    # The loader hands out image indices; the hook looks up pixels and sizes (see RandomResizedCropFlip).
    return TensorLoader(torch.arange(len(labels)), labels, cfg.batch_size, shuffle=True, seed=params.seed,
                        transform=transform, max_batches=cfg.max_batches if capped else None)


def eval_loader(images: torch.Tensor, sizes: torch.Tensor, labels: torch.Tensor, size: int,
                crop_fraction: float) -> TensorLoader:
    crops = eval_crops(images, sizes, size, crop_fraction)
    return TensorLoader(crops, labels, EVAL_BATCH, transform=EvalTransform(imagenet_normalize(images.device)))


def train_loader(params: Params, cfg: Train, device: torch.device, capped: bool = True) -> TensorLoader:
    data, aug = load_split("train", device), params.transfer.augment
    return augmenting_loader(data["images"], data["sizes"], data["labels"], params, cfg, aug.image_size,
                             "transfer.augment.crop_scale", aug.crop_scale, aug.flip, capped)


def val_loader(params: Params, device: torch.device) -> TensorLoader:
    data, aug = load_split("val", device), params.transfer.augment
    return eval_loader(data["images"], data["sizes"], data["labels"], aug.image_size, aug.crop_fraction)


def build_model(params: Params, num_classes: int, device: torch.device) -> ResNet18:
    torch.manual_seed(params.seed)  # the same new fc for the range test and training
    return ResNet18(num_classes).to(device)


def weights_files(params: Params, backbone: str = "pretrained") -> list[Path]:
    """The file the backbone weights come from, for checkpoint identity."""
    weights = backbone_weights(params, backbone)
    if weights == "pipeline":
        return [BACKBONE]
    if weights in ("none", "imagenet"):
        return []  # imagenet: torchvision's file, named after its own sha256
    return [Path(weights)]


def head_model(params: Params, num_classes: int, device: torch.device,
               backbone: str = "pretrained") -> tuple[ResNet18, str]:
    """Stage 1's network: the backbone from ``transfer.model.weights`` (or a random one), frozen; a new fc.
    Both backbones get the same fc: ``build_model`` seeds it, and ``load_backbone`` leaves fc alone."""
    model = build_model(params, num_classes, device)
    source = load_backbone(model, backbone_weights(params, backbone), BACKBONE)
    return model.freeze_backbone(True), source


def finetune_model(params: Params, num_classes: int, device: torch.device,
                   backbone: str = "pretrained") -> ResNet18:
    """Stage 2's network: the head stage's best weights, everything trainable."""
    model = build_model(params, num_classes, device)
    load_into(model, backbone_path(HEAD_WEIGHTS, backbone))
    return model.freeze_backbone(False)


def head_lr(params: Params, backbone: str = "pretrained") -> float:
    """Each backbone's own range test's pick (lr: auto): the same rule, not the same number."""
    return resolve_lr(params.transfer.head.train.lr, backbone_path(HEAD_LR_JSON, backbone), "transfer.head.train.lr")


def finetune_lr(params: Params, backbone: str = "pretrained") -> float:
    """The last group's (fc) LR: a tenth of stage 1's by default, as fastai's two-stage recipe advises."""
    lr = params.transfer.finetune.train.lr
    if lr == "head_div_10":
        return head_lr(params, backbone) / 10
    return resolve_lr(lr, backbone_path(FINETUNE_LR_JSON, backbone), "transfer.finetune.train.lr")


def finetune_groups(model: ResNet18, lr: float, spread: float) -> list[dict]:
    """Optimizer groups stem+layer1, layer2, layer3, layer4, fc at LRs lr/spread .. lr."""
    return [{"params": params, "lr": group_lr} for params, group_lr in zip(model.layer_groups(), group_lrs(lr, spread))]
