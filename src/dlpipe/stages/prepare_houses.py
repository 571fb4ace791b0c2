"""Stage prepare_houses: split, fit the feature pipeline on the training split only,
and write tensors for train / val / test plus the fitted pipeline as JSON."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dlpipe.config import HousesPrepare, Params
from dlpipe.data import houses_features as hf
from dlpipe.data.houses_prepared import PREPARED_DIR, RAW_DIR, save_split
from dlpipe.declare import Stage
from dlpipe.errors import PipelineError
from dlpipe.io import atomic_dir, write_json

log = logging.getLogger(__name__)


STAGE = Stage(
    params=("houses.prepare",), deps=(RAW_DIR,), outs=(PREPARED_DIR,),
)


def read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise PipelineError(f"{path}: file not found; run fetch_houses first")
    try:
        frame = pd.read_csv(path, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: not a readable CSV ({str(exc).splitlines()[0][:200]})") from None
    if frame.empty:
        raise PipelineError(f"{path}: has a header but no rows")
    # pandas pads a short row with NaN (a file cut mid-line reads "fine"); refuse it.
    lines = []  # where each row pandas read starts (a quoted field may span lines)
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        width = len(next(reader))
        end = reader.line_num
        for row in reader:
            if row and len(row) < width:
                raise PipelineError(
                    f"{path}: line {reader.line_num} has {len(row)} fields, the header {width} "
                    f"(a truncated or damaged file?)"
                )
            if row:  # pandas skips blank lines
                lines.append(end + 1)
            end = reader.line_num
    hf.check_ids(frame, str(path), lines if len(lines) == len(frame) else None)
    return frame


def prepare(train_all: pd.DataFrame, test: pd.DataFrame, cfg: HousesPrepare) -> dict:
    """Pure: split, fit on the training rows, transform all three. Returns tensors and the spec."""
    train_pos, val_pos = hf.split_indices(len(train_all), cfg.val_fraction, cfg.split_seed)
    train, val = train_all.iloc[train_pos], train_all.iloc[val_pos]
    val_outlier = (val[hf.LIVING_AREA] > cfg.outlier_min_living_area).to_numpy()
    dropped = []
    if cfg.drop_outliers:
        is_outlier = train[hf.LIVING_AREA] > cfg.outlier_min_living_area
        dropped = train.loc[is_outlier, hf.ID].tolist()
        train = train[~is_outlier]
        if train.empty:
            raise PipelineError(
                f"every one of the {len(dropped)} training rows is over {cfg.outlier_min_living_area:g} sq ft and "
                "would be dropped ('houses.prepare.outlier_min_living_area', 'houses.prepare.drop_outliers'); "
                "expected at least one training row left")
    spec = hf.fit_features(train, cfg.skew_threshold)

    def target(frame: pd.DataFrame) -> torch.Tensor:
        return torch.tensor(np.log1p(frame[hf.TARGET].to_numpy(dtype=np.float64)), dtype=torch.float32)

    def ids(frame: pd.DataFrame) -> torch.Tensor:
        return torch.tensor(frame[hf.ID].to_numpy(dtype=np.int64))

    splits = {
        "train": {"x": torch.from_numpy(hf.transform(spec, train, "train split")), "y": target(train), "id": ids(train)},
        "val": {"x": torch.from_numpy(hf.transform(spec, val, "validation split")), "y": target(val), "id": ids(val),
                "outlier": torch.tensor(val_outlier)},
        "test": {"x": torch.from_numpy(hf.transform(spec, test, "test.csv")), "id": ids(test)},
    }
    summary = {
        "rows": {name: len(split["id"]) for name, split in splits.items()},
        "features": len(spec.names), "log1p_columns": len(spec.log1p),
        "dropped_train_outlier_ids": dropped, "val_outlier_ids": val.loc[val_outlier, hf.ID].tolist(),
    }
    return {"splits": splits, "spec": spec, "summary": summary}


def main(params: Params) -> None:
    train_path, test_path = RAW_DIR / "train.csv", RAW_DIR / "test.csv"
    train_all, test = read_csv(train_path), read_csv(test_path)
    hf.check_columns(train_all, test, str(train_path), str(test_path))
    hf.check_rows(len(train_all), params.houses.prepare.val_fraction, str(train_path))
    result = prepare(train_all, test, params.houses.prepare)
    with atomic_dir(PREPARED_DIR) as staging:
        for name, tensors in result["splits"].items():
            save_split(staging, name, tensors)
        write_json(staging / "features.json", result["spec"].to_dict())
        write_json(staging / "summary.json", result["summary"])
    log.info("prepared houses: %s", result["summary"]["rows"])
