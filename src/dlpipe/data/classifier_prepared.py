"""The prepared image-classification data (slot ``classifier``), in CIFAR layout.

data/prepared/classifier/
  train.pt, val.pt, test.pt   {"images": uint8 N x 3 x 32 x 32, "labels": int64 N}
  meta.json                   dataset name, class names, split sizes, and the
                              training split's per-channel mean and std (0..1 units)

Written by prepare_classifier, read by every later classifier stage. The
tensor files hold tensors only and load with ``weights_only=True``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dlpipe.errors import PipelineError
from dlpipe.tensor_io import load_tensors, save_tensors

PREPARED_DIR = Path("data/prepared/classifier")
SPLITS = ("train", "val", "test")
META_JSON = "meta.json"


def save_split(folder: Path, split: str, images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1:] != (3, 32, 32):
        raise ValueError(f"{split}: images must be uint8 N x 3 x 32 x 32, got {images.dtype} {tuple(images.shape)}")
    save_tensors(folder / f"{split}.pt", {"images": images.contiguous(), "labels": labels.to(torch.int64).contiguous()})


def load_split(split: str, device: torch.device | str = "cpu", folder: Path = PREPARED_DIR) -> dict[str, torch.Tensor]:
    path = Path(folder) / f"{split}.pt"
    tensors = load_tensors(path, producer="prepare_classifier")
    images, labels = tensors.get("images"), tensors.get("labels")
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels):
        raise PipelineError(f"{path}: expected uint8 N x 3 x 32 x 32 images and N labels; rerun prepare_classifier")
    return {"images": images.to(device), "labels": labels.to(device)}


def load_meta(folder: Path = PREPARED_DIR) -> dict:
    path = Path(folder) / META_JSON
    try:
        meta = json.loads(path.read_text())
        meta["class_names"], meta["mean"], meta["std"]  # noqa: B018 (presence check)
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run prepare_classifier first") from None
    except (ValueError, KeyError, TypeError):
        raise PipelineError(f"{path}: not the metadata prepare_classifier writes; rerun it") from None
    return meta
