"""The prepared GAN data (slot ``gan``).

data/prepared/gan/
  train.pt       {"images": uint8 N x nc x S x S}: what the DCGAN trains on
  real_eval.pt   {"images": ...}: real images the FID's LeNet never saw in
                 training (digits, cifar10: the classifier's val and test
                 splits; absent for a folder, whose pictures LeNet never saw,
                 so train.pt is the pool)
  meta.json      source, image size, channels, sizes, where each set came from

Written by prepare_gan, read by train_dcgan and evaluate_dcgan. The tensor
files hold tensors only and load with ``weights_only=True``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dlpipe.errors import PipelineError
from dlpipe.tensor_io import load_tensors, save_tensors

PREPARED_DIR = Path("data/prepared/gan")
TRAIN, REAL_EVAL, META_JSON = "train.pt", "real_eval.pt", "meta.json"


def save_images(path: Path, images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"{path}: images must be uint8 N x C x S x S, got {images.dtype} {tuple(images.shape)}")
    save_tensors(path, {"images": images.contiguous()})


def load_images(name: str, meta: dict, device: torch.device | str = "cpu",
                folder: Path = PREPARED_DIR) -> torch.Tensor:
    path = Path(folder) / name
    images = load_tensors(path, producer="prepare_gan").get("images")
    shape = (meta["nc"], meta["image_size"], meta["image_size"])
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 \
            or tuple(images.shape[1:]) != shape or len(images) == 0:
        raise PipelineError(f"{path}: expected uint8 N x {' x '.join(map(str, shape))} images; rerun prepare_gan")
    return images.to(device)


def load_meta(folder: Path = PREPARED_DIR) -> dict:
    path = Path(folder) / META_JSON
    try:
        meta = json.loads(path.read_text())
        meta["nc"], meta["image_size"], meta["eval_pool"]  # noqa: B018 (presence check)
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run prepare_gan first") from None
    except (ValueError, KeyError, TypeError):
        raise PipelineError(f"{path}: not the metadata prepare_gan writes; rerun it") from None
    return meta


def to_unit_range(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 0..255 -> float -1..1, the generator's Tanh range (the DCGAN tutorial's Normalize(0.5, 0.5))."""
    return images.float().mul_(1.0 / 127.5).sub_(1.0)
