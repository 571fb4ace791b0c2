"""Turn the raw classifier data into the CIFAR layout, split it, measure it.

- digits: 8x8 images with values 0..16 -> scaled to 0..255, resized to 32x32
  (bilinear), repeated to 3 channels; a stratified train/val/test split.
- cifar10: the python batches (read by a restricted unpickler that only
  rebuilds numpy arrays: a pickle can run code, a downloaded file gets no such
  chance); the 50,000 training images split into train/val, the official
  10,000 test images kept as the test split.
- per-channel mean and std of the training split only (0..1 units).
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dlpipe.errors import PipelineError

SIZE = 32

# Everything a CIFAR-10 python batch (numpy arrays in dicts and lists) needs.
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("numpy.core.numeric", "_frombuffer"): np._core.numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): np._core.numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # bytes pickled by Python 3 at protocol 2 (str -> bytes by a named codec; no code runs)
    ("_codecs", "encode"): codecs.encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _NUMPY_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = _ArrayUnpickler(fh, encoding="bytes").load()
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run fetch_classifier first") from None
    except Exception as exc:  # UnpicklingError, EOFError, ValueError...
        raise PipelineError(f"{path}: not a readable CIFAR-10 python batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise PipelineError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch file -> (uint8 N x 3 x 32 x 32, int64 N). Rows are 1024 red,
    1024 green, 1024 blue values, each plane row-major."""
    batch = read_pickle(path)
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIZE * SIZE:
        raise PipelineError(f"{path}: b'data' must be a uint8 N x 3072 array")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (len(data),) or (len(labels) and (labels.min() < 0 or labels.max() > 9)):
        raise PipelineError(f"{path}: b'labels' must hold {len(data)} class indices 0..9")
    images = torch.from_numpy(data.copy()).view(-1, 3, SIZE, SIZE)
    return images, torch.from_numpy(labels)


def read_cifar_meta(path: Path) -> list[str]:
    names = read_pickle(path).get(b"label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise PipelineError(f"{path}: b'label_names' must list the 10 class names")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def load_cifar10(folder: Path) -> dict:
    """{"train": (images, labels), "test": (images, labels), "class_names": [...]}"""
    parts = [read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    train = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    return {"train": train, "test": read_cifar_batch(folder / "test_batch"),
            "class_names": read_cifar_meta(folder / "batches.meta")}


def digits_to_cifar_layout(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x 8 x 8 with values 0..16 -> uint8 N x 3 x 32 x 32 with values 0..255."""
    if images.dim() != 3 or images.shape[1:] != (8, 8):
        raise PipelineError(f"digits images must be N x 8 x 8, got {tuple(images.shape)}")
    if int(images.max()) > 16:
        raise PipelineError(f"digits images must hold values 0..16, found {int(images.max())}")
    scaled = images.to(torch.float32)[:, None] * (255.0 / 16.0)
    resized = F.interpolate(scaled, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Indices per split: every class contributes round(fraction x its count) to
    each named split, the rest goes to ``train``. Same seed, same split."""
    rng = np.random.default_rng(seed)
    picked: dict[str, list[np.ndarray]] = {name: [] for name in ("train", *fractions)}
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        start = 0
        for name, fraction in fractions.items():
            count = int(round(fraction * len(members)))
            picked[name].append(members[start:start + count])
            start += count
        if start >= len(members):
            raise PipelineError(f"class {cls} has {len(members)} images: the split fractions "
                                f"{fractions} leave none for training (params 'lenet.prepare')")
        picked["train"].append(members[start:])
    return {name: np.sort(np.concatenate(parts)) for name, parts in picked.items()}


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of uint8 N x C x H x W images, in 0..1 units."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk].to(torch.float64) / 255.0
        total += block.sum(dim=(0, 2, 3))
        total_sq += (block * block).sum(dim=(0, 2, 3))
    count = len(images) * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return [float(m) for m in mean], [float(s) for s in std]
