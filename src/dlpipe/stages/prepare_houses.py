"""Stage prepare_houses: split, fit the feature pipeline on the training split only,
and write tensors for train / val / test plus the fitted pipeline as JSON.

The cross-validation folds get the same treatment, each its own pipeline fitted
on its own fitting rows: ``cv_fold<i>.pt`` (see ``cv_fold``)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dlpipe.config import HousesPrepare, Params
from dlpipe.data import houses_features as hf
from dlpipe.data.houses_prepared import PREPARED_DIR, RAW_DIR, SUMMARY, save_split
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


def fitting_rows(rows: pd.DataFrame, cfg: HousesPrepare) -> tuple[pd.DataFrame, list[int]]:
    """``rows`` without its outliers when ``drop_outliers`` (fitting rows only), and the Ids dropped."""
    if not cfg.drop_outliers:
        return rows, []
    is_outlier = hf.outliers(rows, cfg.outlier_min_living_area, cfg.outlier_max_price)
    kept = rows[~is_outlier]
    if kept.empty:
        raise PipelineError(
            f"every one of the {len(rows)} training rows is over {cfg.outlier_min_living_area:g} sq ft and under "
            f"{cfg.outlier_max_price:,.0f} dollars and would be dropped ('houses.prepare.outlier_min_living_area', "
            "'houses.prepare.outlier_max_price', 'houses.prepare.drop_outliers'); expected at least one "
            "training row left")
    return kept, rows.loc[is_outlier, hf.ID].tolist()


def target(frame: pd.DataFrame) -> torch.Tensor:
    return torch.tensor(np.log1p(frame[hf.TARGET].to_numpy(dtype=np.float64)), dtype=torch.float32)


def ids(frame: pd.DataFrame) -> torch.Tensor:
    return torch.tensor(frame[hf.ID].to_numpy(dtype=np.int64))


def fit_and_transform(fit: pd.DataFrame, held_out: pd.DataFrame, test: pd.DataFrame, cfg: HousesPrepare,
                      held_out_name: str) -> tuple[hf.FeatureSpec, dict[str, dict[str, torch.Tensor]]]:
    """The feature pipeline fitted on ``fit`` alone; tensors of the fitting, held-out and test rows."""
    spec = hf.fit_features(fit, cfg.skew_threshold, cfg.engineered_features, cfg.clip_to_training_range)

    def x(frame: pd.DataFrame, name: str) -> torch.Tensor:
        return torch.from_numpy(hf.transform(spec, frame, name))

    outlier = hf.outliers(held_out, cfg.outlier_min_living_area, cfg.outlier_max_price)
    return spec, {
        "train": {"x": x(fit, "train split"), "y": target(fit), "id": ids(fit)},
        "val": {"x": x(held_out, held_out_name), "y": target(held_out), "id": ids(held_out),
                "outlier": torch.tensor(outlier)},
        "test": {"x": x(test, "test.csv"), "id": ids(test)},
    }


def cv_fold(tensors: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One fold's tensors in one file: ``fit_*`` (the fitting rows), ``val_*`` (the held-out
    rows) and ``test_x`` (test.csv through this fold's pipeline; the Ids are test.pt's)."""
    return {**{f"fit_{k}": v for k, v in tensors["train"].items()},
            **{f"val_{k}": v for k, v in tensors["val"].items()}, "test_x": tensors["test"]["x"]}


def prepare(train_all: pd.DataFrame, test: pd.DataFrame, cfg: HousesPrepare) -> dict:
    """Pure: the train/val split and the cross-validation folds, each with the feature pipeline
    fitted on its fitting rows only, and every row set transformed. Returns tensors and the spec."""
    train_pos, val_pos = hf.split_indices(len(train_all), cfg.val_fraction, cfg.split_seed)
    train, dropped = fitting_rows(train_all.iloc[train_pos], cfg)
    val = train_all.iloc[val_pos]
    spec, splits = fit_and_transform(train, val, test, cfg, "validation split")
    folds, fold_dropped = {}, []
    for fold, (fit_pos, held_pos) in enumerate(hf.fold_indices(len(train_all), cfg.cv_folds, cfg.cv_split_seed)):
        fit, fit_dropped = fitting_rows(train_all.iloc[fit_pos], cfg)
        folds[f"cv_fold{fold}"] = cv_fold(fit_and_transform(fit, train_all.iloc[held_pos], test, cfg,
                                                            f"cross-validation fold {fold}")[1])
        fold_dropped.append(fit_dropped)
    summary = {
        "rows": {name: len(split["id"]) for name, split in splits.items()},
        "features": len(spec.names), "log1p_columns": len(spec.log1p),
        "dropped_train_outlier_ids": dropped,
        "val_outlier_ids": splits["val"]["id"][splits["val"]["outlier"]].tolist(),
        "cv": {"folds": cfg.cv_folds, "held_out_rows": [len(f["val_id"]) for f in folds.values()],
               "features": [f["fit_x"].shape[1] for f in folds.values()], "dropped_fit_outlier_ids": fold_dropped},
    }
    return {"splits": splits, "folds": folds, "spec": spec, "summary": summary}


def main(params: Params) -> None:
    train_path, test_path = RAW_DIR / "train.csv", RAW_DIR / "test.csv"
    train_all, test = read_csv(train_path), read_csv(test_path)
    hf.check_columns(train_all, test, str(train_path), str(test_path))
    cfg = params.houses.prepare
    hf.check_rows(len(train_all), cfg.val_fraction, cfg.cv_folds, str(train_path))
    result = prepare(train_all, test, cfg)
    with atomic_dir(PREPARED_DIR) as staging:
        for name, tensors in {**result["splits"], **result["folds"]}.items():
            save_split(staging, name, tensors)
        write_json(staging / "features.json", result["spec"].to_dict())
        SUMMARY.write(staging / "summary.json", result["summary"])
    log.info("prepared houses: %s", result["summary"]["rows"])
