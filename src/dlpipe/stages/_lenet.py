"""What the LeNet stages share: paths, loaders over the prepared uint8 images
(batched augmentation and normalisation as the loader's batch hook), the model
and its training run.

``net`` is a params section with ``model``, ``augment`` and ``train``: ``lenet``
(train_lenet) or ``dcgan.feature_net`` (train_fid_lenet, the DCGAN's metric network)."""

from __future__ import annotations

from pathlib import Path

import torch

from dlpipe import tensor_io
from dlpipe.config import FeatureNet, LeNetAugment, LeNetSection
from dlpipe.data.augment import EvalTransform, Normalize, TrainTransform
from dlpipe.data.classifier_prepared import META_JSON, PREPARED_DIR, load_meta, load_split
from dlpipe.data.loaders import TensorLoader
from dlpipe.models.lenet import LeNet
from dlpipe.training import loop
from dlpipe.training.accel import OFF, Accel
from dlpipe.training.checkpoint import run_identity
from dlpipe.training.loop import FitResult
from dlpipe.training.state import RunFiles
from dlpipe.training.tasks import classification

LR_FIND_JSON = Path("reports/lr_find/lenet.json")
WEIGHTS = Path("models/lenet.pt")
CHECKPOINT = Path("checkpoints/lenet/last.pt")
EVAL_BATCH = 1000


def flip_enabled(augment: LeNetAugment, dataset: str) -> bool:
    """``auto``: mirror CIFAR-10's photos, never digits (a mirrored 3 is no digit)."""
    return dataset == "cifar10" if augment.flip == "auto" else bool(augment.flip)


def normalizer(meta: dict, device: torch.device) -> Normalize:
    return Normalize(meta["mean"], meta["std"], device)


def train_loader(net: LeNetSection | FeatureNet, seed: int, meta: dict, device: torch.device,
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


def build_model(net: LeNetSection | FeatureNet, seed: int, num_classes: int, device: torch.device,
                seeded: bool = True) -> LeNet:
    if seeded:
        torch.manual_seed(seed)  # same initial weights for the range test and training
    arch = net.model
    return LeNet(num_classes, tuple(arch.channels), tuple(arch.hidden)).to(device)


def fit(net: LeNetSection | FeatureNet, seed: int, lr: float, device: torch.device, *, stage: str, params,
        weights: Path, checkpoint: Path, live: Path, accel: Accel = OFF) -> tuple[FitResult, dict]:
    """Train ``net``'s LeNet on the prepared training split with the shared loop (best epoch by
    validation accuracy, a resumable checkpoint each epoch) and save its best weights; the
    training stage of either LeNet (train_lenet, train_fid_lenet). ``stage``: its ``__name__``."""
    meta = load_meta()
    train, val = train_loader(net, seed, meta, device), eval_loader("val", meta, device)
    model = build_model(net, seed, len(meta["class_names"]), device)
    result = loop.train(
        model, model.parameters(), train, val, classification(), net.train, lr, RunFiles(
            name=stage.rpartition(".")[2], checkpoint=checkpoint, identity=run_identity(
                stage, params, [PREPARED_DIR / "train.pt", PREPARED_DIR / "val.pt", PREPARED_DIR / META_JSON], lr=lr),
            live=live), accel,
    )
    tensor_io.save_weights(weights, result.best_state)
    return result, meta
