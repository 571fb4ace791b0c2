"""House Prices tabular features: a pipeline fitted on the training split only.

Steps, all learned from the training rows and stored as plain JSON so the
validation and Kaggle test rows are transformed identically:
optionally, engineered columns first (``engineer``: totals, ages, quality x
area, ordinal quality scores; each from the row's own values, so nothing leaks);
numeric columns -> median fill -> optionally clipped to the training rows'
range -> log1p where skewed -> standardise;
categorical columns -> "NA" fill -> one-hot over the training categories
(a category never seen in training encodes as all zeros).

The clip is for rows beyond anything the model was fitted on: test.csv holds a
house of 5,095 sq ft on its first floor, above every training house once the
two partial sales (Ids 524 and 1299) are left out, and an MLP's output grows
without bound along such a direction. On the training rows themselves it
changes nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from dlpipe.errors import PipelineError, excerpt

ID, TARGET = "Id", "SalePrice"
LIVING_AREA = "GrLivArea"  # sq ft above ground; the outlier criterion
# Integer-coded but nominal: building class codes mean nothing as numbers.
NOMINAL_CODES = ("MSSubClass",)

# The data description's quality scales (Ex excellent .. Po poor; NA: no such part of the house).
QUALITY = {"Ex": 5, "Gd": 4, "TA": 3, "Fa": 2, "Po": 1}
ORDINAL_SCALES = {
    **{col: QUALITY for col in ("ExterQual", "ExterCond", "BsmtQual", "BsmtCond", "HeatingQC", "KitchenQual",
                                "FireplaceQu", "GarageQual", "GarageCond", "PoolQC")},
    "BsmtExposure": {"Gd": 4, "Av": 3, "Mn": 2, "No": 1},
    "BsmtFinType1": {"GLQ": 6, "ALQ": 5, "BLQ": 4, "Rec": 3, "LwQ": 2, "Unf": 1},
    "BsmtFinType2": {"GLQ": 6, "ALQ": 5, "BLQ": 4, "Rec": 3, "LwQ": 2, "Unf": 1},
    "GarageFinish": {"Fin": 3, "RFn": 2, "Unf": 1},
}
SCORE_SUFFIX = "Score"  # ExterQual -> ExterQualScore
# Sums of areas (sq ft) or of bathrooms, and sale-year differences (years).
TOTALS = {
    "TotalSF": ("TotalBsmtSF", "1stFlrSF", "2ndFlrSF"),
    "PorchSF": ("OpenPorchSF", "EnclosedPorch", "3SsnPorch", "ScreenPorch", "WoodDeckSF"),
}
AGES = {"HouseAge": "YearBuilt", "RemodAge": "YearRemodAdd"}  # YrSold minus the year
SOLD = "YrSold"
QUALITY_AREA = {"QualGrLivArea": "GrLivArea", "QualTotalSF": "TotalSF"}  # OverallQual x sq ft
OVERALL = "OverallQual"
ENGINEERED_INPUTS = sorted({c for cols in TOTALS.values() for c in cols} | set(AGES.values()) | {SOLD, OVERALL}
                           | {"FullBath", "HalfBath", "BsmtFullBath", "BsmtHalfBath"} | set(ORDINAL_SCALES)
                           | {"GrLivArea"})


def engineer(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """``frame`` with the engineered columns added. A missing input stays missing (the median
    fill then treats it as any other gap); a scale's NA or unknown grade scores 0."""
    missing = [c for c in ENGINEERED_INPUTS if c not in frame.columns]
    if missing:
        raise PipelineError(f"{name}: missing column(s) {missing[:5]} that the engineered features are made of; "
                            "expected the competition's columns, or 'houses.prepare.engineered_features': false")
    numbers = frame[[c for c in ENGINEERED_INPUTS if c not in ORDINAL_SCALES]].apply(pd.to_numeric, errors="coerce")
    new = {total: numbers[list(cols)].sum(axis=1, min_count=len(cols)) for total, cols in TOTALS.items()}
    new["TotalBath"] = (numbers["FullBath"] + numbers["BsmtFullBath"]
                        + 0.5 * (numbers["HalfBath"] + numbers["BsmtHalfBath"]))
    new.update({age: numbers[SOLD] - numbers[year] for age, year in AGES.items()})
    new.update({col: numbers[OVERALL] * (new[area] if area in new else numbers[area])
                for col, area in QUALITY_AREA.items()})
    new.update({col + SCORE_SUFFIX: frame[col].map(scale).fillna(0).astype(float)
                for col, scale in ORDINAL_SCALES.items()})
    return pd.concat([frame, pd.DataFrame(new, index=frame.index)], axis=1)


@dataclass(frozen=True)
class FeatureSpec:
    numeric: list[str]
    medians: dict[str, float]
    log1p: list[str]
    means: dict[str, float]
    stds: dict[str, float]
    categories: dict[str, list[str]]
    engineered: bool  # ``engineer`` runs before the other steps
    # The training rows' range per numeric column (after the median fill, before log1p) that
    # other rows are clipped to; empty: no clipping.
    lows: dict[str, float]
    highs: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def names(self) -> list[str]:
        return self.numeric + [f"{col}={cat}" for col, cats in self.categories.items() for cat in cats]


def check_columns(train: pd.DataFrame, test: pd.DataFrame, train_name: str, test_name: str) -> None:
    """The competition layout: Id and SalePrice in train, the same features in both."""
    for name, frame, needed in ((train_name, train, [ID, TARGET, LIVING_AREA]), (test_name, test, [ID, LIVING_AREA])):
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise PipelineError(f"{name}: missing required column(s) {missing}")
    extra = sorted(set(train.columns) - set(test.columns) - {TARGET})
    if extra:
        raise PipelineError(f"{test_name}: lacks feature column(s) {extra} that {train_name} has")
    if not pd.api.types.is_numeric_dtype(train[LIVING_AREA]):  # compared with a number of sq ft
        value = train[LIVING_AREA].dropna().iloc[0]
        raise PipelineError(f"{train_name}: column {LIVING_AREA} holds {excerpt(repr(value))} and other text; "
                            "expected numbers (sq ft of above-ground living area)")
    prices = pd.to_numeric(train[TARGET], errors="coerce")
    bad = train.loc[~np.isfinite(prices) | (prices <= 0), ID].tolist()
    if bad:
        raise PipelineError(f"{train_name}: column {TARGET} must hold positive numbers; bad rows with Id {bad[:5]}")
    # The training file decides which columns are numeric: a number column with a few
    # words in it would silently become a categorical one. (test.csv is checked
    # against the fitted columns by ``transform``.)
    for col in train.columns:
        if col in (ID, TARGET) or pd.api.types.is_numeric_dtype(train[col]):
            continue
        values = train[col].dropna()
        numbers = pd.to_numeric(values, errors="coerce")
        if len(values) and numbers.notna().mean() > 0.5:
            row = numbers.isna().idxmax()
            raise PipelineError(f"{train_name}: non-numeric values in numeric column(s) ['{col}'], "
                                f"e.g. {values[row]!r} in the row with Id {train.loc[row, ID]}; expected numbers")


ID_EXPECTED = "expected a unique integer Id in every row"
FRACTION_KEY = "houses.prepare.val_fraction"


def check_ids(frame: pd.DataFrame, name: str, lines: list[int] | None = None) -> None:
    """Every row's Id an integer (int64), none empty, none twice: an empty Id would be
    stored as -2**63 and a duplicated one pass unseen. ``lines``: each row's line in the file."""
    if ID not in frame.columns:
        return  # check_columns names the missing column

    def where(row: int) -> str:
        return f"line {lines[row]}" if lines else f"data row {row + 1}"

    values = frame[ID]
    numbers = pd.to_numeric(values, errors="coerce")
    if not pd.api.types.is_integer_dtype(numbers):  # an empty cell (NaN), a word, a fraction
        numbers = numbers.astype("float64")
    whole = numbers.notna() & np.isfinite(numbers) & (numbers == np.floor(numbers)) & (numbers.abs() < 2**63)
    if not whole.all():
        row = int(np.flatnonzero(~whole.to_numpy())[0])
        value = values.iloc[row]
        value = value.item() if isinstance(value, np.generic) else value  # 2.5, not np.float64(2.5)
        what = "empty Id" if pd.isna(value) else f"Id {excerpt(repr(value))} is not a 64-bit integer"
        raise PipelineError(f"{name}: {where(row)}: {what}; {ID_EXPECTED}")
    twice = numbers.duplicated(keep=False).to_numpy()
    if twice.any():
        first = int(np.flatnonzero(twice)[0])
        second = int(np.flatnonzero(twice & (numbers.to_numpy() == numbers.iloc[first]))[1])
        raise PipelineError(f"{name}: Id {int(numbers.iloc[first])} appears more than once ({where(first)} and "
                            f"{where(second)}); {ID_EXPECTED}")


def check_rows(n_rows: int, val_fraction: float, folds: int, name: str) -> None:
    """The split keeps at least one row for validation and one for training; every fold holds one out."""
    n_train, n_val = split_sizes(n_rows, val_fraction)
    if n_val < 1 or n_train < 1:
        raise PipelineError(f"{name}: {n_rows} row(s) give {n_val} to the validation split and {n_train} to "
                            f"training ('{FRACTION_KEY}' {val_fraction}); expected at least one row in each: "
                            "more rows, or another fraction")
    if n_rows < folds:
        raise PipelineError(f"{name}: {n_rows} row(s) cannot fill {folds} cross-validation folds "
                            f"('houses.prepare.cv_folds'); expected at least one row per fold: more rows, "
                            "or fewer folds")


def _is_numeric(col: str, series: pd.Series) -> bool:
    return col not in NOMINAL_CODES and pd.api.types.is_numeric_dtype(series)


def fit_features(train: pd.DataFrame, skew_threshold: float, engineered: bool = False,
                 clip: bool = False) -> FeatureSpec:
    features = train.drop(columns=[ID, TARGET], errors="ignore")
    if engineered:
        features = engineer(features, "training rows")
    numeric = [c for c in features.columns if _is_numeric(c, features[c])]
    categorical = [c for c in features.columns if c not in numeric]
    medians = {c: float(features[c].median()) if features[c].notna().any() else 0.0 for c in numeric}
    filled = features[numeric].fillna(medians).astype(float)
    lows = {c: float(filled[c].min()) for c in numeric} if clip else {}
    highs = {c: float(filled[c].max()) for c in numeric} if clip else {}
    skew = filled.skew()
    log1p = [c for c in numeric if abs(skew[c]) > skew_threshold and filled[c].min() >= 0]
    filled[log1p] = np.log1p(filled[log1p])
    means = {c: float(filled[c].mean()) for c in numeric}
    # A constant column gets std 1 so it standardises to 0 instead of NaN.
    stds = {c: float(filled[c].std(ddof=0)) or 1.0 for c in numeric}
    categories = {c: sorted(features[c].fillna("NA").astype(str).unique().tolist()) for c in categorical}
    return FeatureSpec(numeric, medians, log1p, means, stds, categories, engineered, lows, highs)


def transform(spec: FeatureSpec, frame: pd.DataFrame, name: str) -> np.ndarray:
    """Rows of ``frame`` -> float32 matrix with columns ``spec.names``."""
    if spec.engineered:
        frame = engineer(frame, name)
    missing = [c for c in spec.numeric + list(spec.categories) if c not in frame.columns]
    if missing:
        raise PipelineError(f"{name}: missing feature column(s) {missing[:5]}")
    numeric = frame[spec.numeric].apply(pd.to_numeric, errors="coerce")
    not_numbers = [c for c in spec.numeric if numeric[c].isna().sum() > frame[c].isna().sum()]
    if not_numbers:
        raise PipelineError(f"{name}: non-numeric values in numeric column(s) {not_numbers[:5]}")
    numeric = numeric.fillna(spec.medians).astype(float)
    if spec.lows:
        numeric = numeric.clip(lower=pd.Series(spec.lows), upper=pd.Series(spec.highs), axis=1)
    # Clip at 0 before log1p: a negative value in a column whose training values were >= 0.
    numeric[spec.log1p] = np.log1p(numeric[spec.log1p].clip(lower=0))
    numeric = (numeric - pd.Series(spec.means)) / pd.Series(spec.stds)
    blocks = [numeric[spec.numeric].to_numpy(dtype=np.float32)]
    for col, cats in spec.categories.items():
        values = frame[col].fillna("NA").astype(str).to_numpy()
        blocks.append((values[:, None] == np.asarray(cats)[None, :]).astype(np.float32))
    return np.concatenate(blocks, axis=1)


def fold_indices(n_rows: int, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-fold cross-validation: (fitting, held-out) row positions per fold, each row held out
    exactly once. The same folds as scikit-learn's ``KFold(folds, shuffle=True,
    random_state=seed)`` (a test checks), without importing it into the data stage."""
    order = np.arange(n_rows)
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(folds, n_rows // folds)
    sizes[: n_rows % folds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    held_out = [np.sort(order[start:stop]) for start, stop in zip(bounds, bounds[1:])]
    return [(np.setdiff1d(np.arange(n_rows), rows), rows) for rows in held_out]


def outliers(frame: pd.DataFrame, min_living_area: float, max_price: float) -> np.ndarray:
    """Rows over ``min_living_area`` sq ft sold below ``max_price`` dollars (the partial sales)."""
    return ((frame[LIVING_AREA] > min_living_area) & (frame[TARGET] < max_price)).to_numpy()


def split_sizes(n_rows: int, val_fraction: float) -> tuple[int, int]:
    """(training rows, validation rows) of ``split_indices``."""
    n_val = int(round(n_rows * val_fraction))
    return n_rows - n_val, n_val


def split_indices(n_rows: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic shuffled split; returns sorted row positions (train, val)."""
    order = np.random.default_rng(seed).permutation(n_rows)
    n_val = split_sizes(n_rows, val_fraction)[1]
    return np.sort(order[n_val:]), np.sort(order[:n_val])
