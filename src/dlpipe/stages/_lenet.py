"""What the LeNet stages share: paths, loaders over the prepared uint8 images
(batched augmentation and normalisation as the loader's batch hook) and the model.

``net`` is a params section with ``model``, ``augment`` and ``train``: ``lenet``
(train_lenet) or ``dcgan.feature_net`` (train_fid_lenet, the DCGAN's metric network)."""

from __future__ import annotations

from pathlib import Path

import torch

from dlpipe.config import Augment, FeatureNet, LeNetModel
from dlpipe.data.augment import EvalTransform, Normalize, TrainTransform
from dlpipe.data.classifier_prepared import load_split
from dlpipe.data.loaders import TensorLoader
from dlpipe.models.lenet import LeNet

LR_FIND_JSON = Path("reports/lr_find/lenet.json")
WEIGHTS = Path("models/lenet.pt")
CHECKPOINT = Path("checkpoints/lenet/last.pt")
EVAL_BATCH = 1000


def flip_enabled(augment: Augment, dataset: str) -> bool:
    """``auto``: mirror CIFAR-10's photos, never digits (a mirrored 3 is no digit)."""
    return dataset == "cifar10" if augment.flip == "auto" else bool(augment.flip)


def normalizer(meta: dict, device: torch.device) -> Normalize:
    return Normalize(meta["mean"], meta["std"], device)


def train_loader(net: LeNetModel | FeatureNet, seed: int, meta: dict, device: torch.device,
                 capped: bool = True) -> TensorLoader:
    """Augmented, normalised, shuffled training batches; ``capped`` applies
    ``train.max_batches`` (the LR range test counts its own steps)."""
    cfg, augment = net.train, net.augment
    train = load_split("train", device)
    transform = TrainTransform(normalizer(meta, device), augment.crop_padding, flip_enabled(augment, meta["dataset"]))
    return TensorLoader(train["images"], train["labels"], cfg.batch_size, shuffle=True, seed=seed,
                        transform=transform, max_batches=cfg.max_batches if capped else None)


def eval_loader(split: str, meta: dict, device: torch.device) -> TensorLoader:
    data = load_split(split, device)
    return TensorLoader(data["images"], data["labels"], EVAL_BATCH, transform=EvalTransform(normalizer(meta, device)))


def build_model(net: LeNetModel | FeatureNet, seed: int, num_classes: int, device: torch.device,
                seeded: bool = True) -> LeNet:
    if seeded:
        torch.manual_seed(seed)  # same initial weights for the range test and training
    arch = net.model
    return LeNet(num_classes, tuple(arch.channels), tuple(arch.hidden)).to(device)
