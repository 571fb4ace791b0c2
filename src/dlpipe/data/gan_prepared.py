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

from pathlib import Path

import torch

from dlpipe.layouts import TEXT, JsonFile, Tensor, TensorFile, record

PREPARED_DIR = Path("data/prepared/gan")
TRAIN, REAL_EVAL, META_JSON = "train.pt", "real_eval.pt", "meta.json"


IMAGES = TensorFile("prepare_gan", f"{PREPARED_DIR}/*.pt", {"images": Tensor("uint8", ("N", "nc", "size", "size"))})
META = JsonFile("prepare_gan", f"{PREPARED_DIR}/{META_JSON}", record({
    "dataset": TEXT, "image_size": {"type": "integer", "minimum": 8}, "nc": {"enum": [1, 3]},
    "eval_pool": {"enum": ["real_eval", "train"]}}))


def save_images(path: Path, images: torch.Tensor) -> None:
    IMAGES.save(path, {"images": images})


def load_images(name: str, meta: dict, device: torch.device | str = "cpu",
                folder: Path = PREPARED_DIR) -> torch.Tensor:
    return IMAGES.load(Path(folder) / name, device, nc=meta["nc"], size=meta["image_size"])["images"]


def load_meta(folder: Path = PREPARED_DIR) -> dict:
    return META.read(Path(folder) / META_JSON)


def to_unit_range(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 0..255 -> float -1..1, the generator's Tanh range (the DCGAN tutorial's Normalize(0.5, 0.5))."""
    return images.float().mul_(1.0 / 127.5).sub_(1.0)
