"""The prepared House Prices splits as tensors: written by prepare_houses, read by
every later houses stage. Targets are log1p(SalePrice)."""

from __future__ import annotations

from pathlib import Path

import torch

from dlpipe.tensor_io import load_tensors, save_tensors

RAW_DIR = Path("data/raw/houses")
PREPARED_DIR = Path("data/prepared/houses")
SPLITS = ("train", "val", "test")


def save_split(folder: Path, split: str, tensors: dict[str, torch.Tensor]) -> None:
    save_tensors(folder / f"{split}.pt", tensors)


def load_split(split: str, device: torch.device | str = "cpu", folder: Path = PREPARED_DIR) -> dict[str, torch.Tensor]:
    tensors = load_tensors(Path(folder) / f"{split}.pt", producer="prepare_houses")
    return {k: v.to(device) for k, v in tensors.items()}
