"""The prepared image-classification data (slot ``classifier``), in CIFAR layout.

data/prepared/classifier/
  train.pt, val.pt, test.pt   {"images": uint8 N x 3 x 32 x 32, "labels": int64 N}
  meta.json                   dataset name, class names, split sizes, and the
                              training split's per-channel mean and std (0..1 units)

Written by prepare_classifier, read by every later classifier stage. The
tensor files hold tensors only and load with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dlpipe.layouts import POSITIVE, TEXT, JsonFile, Tensor, TensorFile, array, record

PREPARED_DIR = Path("data/prepared/classifier")
SPLITS = ("train", "val", "test")
META_JSON = "meta.json"


_CHANNEL_STATS = {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}
SPLIT = TensorFile("prepare_classifier", f"{PREPARED_DIR}/*.pt", {
    "images": Tensor("uint8", ("N", 3, 32, 32)), "labels": Tensor("int64", ("N",), min=0, below="classes")})
META = JsonFile("prepare_classifier", f"{PREPARED_DIR}/{META_JSON}", record({
    "dataset": TEXT, "class_names": array(TEXT, min_items=2), "mean": _CHANNEL_STATS,
    "std": {**_CHANNEL_STATS, "items": POSITIVE}}))


def save_split(folder: Path, split: str, images: torch.Tensor, labels: torch.Tensor) -> None:
    SPLIT.save(folder / f"{split}.pt", {"images": images, "labels": labels.to(torch.int64)})


def load_split(split: str, device: torch.device | str = "cpu", folder: Path = PREPARED_DIR) -> dict[str, torch.Tensor]:
    classes = len(load_meta(folder)["class_names"])
    return SPLIT.load(Path(folder) / f"{split}.pt", device, classes=classes)


def load_meta(folder: Path = PREPARED_DIR) -> dict:
    return META.read(Path(folder) / META_JSON)
