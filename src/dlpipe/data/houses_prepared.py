"""The prepared House Prices splits as tensors: written by prepare_houses, read by
every later houses stage. Targets are log1p(SalePrice)."""

from __future__ import annotations

from pathlib import Path

import torch

from dlpipe.errors import PipelineError
from dlpipe.training.checkpoint import save

RAW_DIR = Path("data/raw/houses")
PREPARED_DIR = Path("data/prepared/houses")
SPLITS = ("train", "val", "test")


def save_split(folder: Path, split: str, tensors: dict[str, torch.Tensor]) -> None:
    save(folder / f"{split}.pt", tensors)


def load_split(split: str, device: torch.device | str = "cpu", folder: Path = PREPARED_DIR) -> dict[str, torch.Tensor]:
    path = Path(folder) / f"{split}.pt"
    if not path.is_file():
        raise PipelineError(f"{path}: not found; run prepare_houses first")
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PipelineError(f"{path}: unreadable prepared split ({type(exc).__name__})") from None
    return {k: v.to(device) for k, v in tensors.items()}
