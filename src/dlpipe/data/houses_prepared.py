"""The prepared House Prices splits as tensors: written by prepare_houses, read by
every later houses stage. Targets are log1p(SalePrice).

data/prepared/houses/
  train.pt, val.pt, test.pt   the validation split: x (N x F features), y, id (and val's outlier flags)
  cv_fold<k>.pt               fold k: its fitting rows (fit_*), held-out rows (val_*), test.csv's features
  features.json               the fitted feature pipeline
  summary.json                row counts, the feature width F of each file, the folds
"""

from __future__ import annotations

from pathlib import Path

import torch

from dlpipe.layouts import COUNT, FLOAT, JsonFile, Tensor, TensorFile, array, record

RAW_DIR = Path("data/raw/houses")
PREPARED_DIR = Path("data/prepared/houses")
SPLITS = ("train", "val", "test")
PRODUCER = "prepare_houses"

_X, _TARGET = Tensor(FLOAT, ("N", "F")), Tensor(FLOAT, ("N",), min=0)  # log1p of a price: >= 0
_ID = Tensor("int64", ("N",), min=0, unique=True)  # Kaggle's Id column
_FLAG = Tensor("bool", ("N",))
LAYOUTS = {
    "train": TensorFile(PRODUCER, f"{PREPARED_DIR}/train.pt", {"x": _X, "y": _TARGET, "id": _ID}),
    "val": TensorFile(PRODUCER, f"{PREPARED_DIR}/val.pt", {"x": _X, "y": _TARGET, "id": _ID, "outlier": _FLAG}),
    "test": TensorFile(PRODUCER, f"{PREPARED_DIR}/test.pt", {"x": _X, "id": _ID}),
}
FOLD = TensorFile(PRODUCER, f"{PREPARED_DIR}/cv_fold*.pt", {
    "fit_x": _X, "fit_y": _TARGET, "fit_id": _ID,
    "val_x": Tensor(FLOAT, ("M", "F")), "val_y": Tensor(FLOAT, ("M",), min=0),
    "val_id": Tensor("int64", ("M",), min=0, unique=True), "val_outlier": Tensor("bool", ("M",)),
    "test_x": Tensor(FLOAT, ("T", "F")),
})
SUMMARY = JsonFile(PRODUCER, f"{PREPARED_DIR}/summary.json", record({
    "rows": record({split: COUNT for split in SPLITS}),
    "features": {"type": "integer", "minimum": 1},
    "cv": record({"folds": {"type": "integer", "minimum": 2}, "features": array({"type": "integer", "minimum": 1})}),
}))


def layout(split: str) -> TensorFile:
    return FOLD if split.startswith("cv_fold") else LAYOUTS[split]


def width(split: str, summary: dict) -> int:
    """The feature width F of ``split``'s file, as the summary records it."""
    if not split.startswith("cv_fold"):
        return summary["features"]
    fold, widths = int(split.removeprefix("cv_fold")), summary["cv"]["features"]
    return widths[fold] if fold < len(widths) else -1  # -1: no such fold, which check refuses


def save_split(folder: Path, split: str, tensors: dict[str, torch.Tensor]) -> None:
    layout(split).save(folder / f"{split}.pt", tensors)


def load_summary(folder: Path = PREPARED_DIR) -> dict:
    return SUMMARY.read(Path(folder) / "summary.json")


def load_split(split: str, device: torch.device | str = "cpu", folder: Path = PREPARED_DIR) -> dict[str, torch.Tensor]:
    return layout(split).load(Path(folder) / f"{split}.pt", device, F=width(split, load_summary(folder)))
