"""House Prices tabular features: a pipeline fitted on the training split only.

Steps, all learned from the training rows and stored as plain JSON so the
validation and Kaggle test rows are transformed identically:
numeric columns -> median fill -> log1p where skewed -> standardise;
categorical columns -> "NA" fill -> one-hot over the training categories
(a category never seen in training encodes as all zeros).
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


@dataclass(frozen=True)
class FeatureSpec:
    numeric: list[str]
    medians: dict[str, float]
    log1p: list[str]
    means: dict[str, float]
    stds: dict[str, float]
    categories: dict[str, list[str]]

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


def check_rows(n_rows: int, val_fraction: float, name: str) -> None:
    """The split keeps at least one row for validation and one for training."""
    n_train, n_val = split_sizes(n_rows, val_fraction)
    if n_val < 1 or n_train < 1:
        raise PipelineError(f"{name}: {n_rows} row(s) give {n_val} to the validation split and {n_train} to "
                            f"training ('{FRACTION_KEY}' {val_fraction}); expected at least one row in each: "
                            "more rows, or another fraction")


def _is_numeric(col: str, series: pd.Series) -> bool:
    return col not in NOMINAL_CODES and pd.api.types.is_numeric_dtype(series)


def fit_features(train: pd.DataFrame, skew_threshold: float) -> FeatureSpec:
    features = train.drop(columns=[ID, TARGET], errors="ignore")
    numeric = [c for c in features.columns if _is_numeric(c, features[c])]
    categorical = [c for c in features.columns if c not in numeric]
    medians = {c: float(features[c].median()) if features[c].notna().any() else 0.0 for c in numeric}
    filled = features[numeric].fillna(medians).astype(float)
    skew = filled.skew()
    log1p = [c for c in numeric if abs(skew[c]) > skew_threshold and filled[c].min() >= 0]
    filled[log1p] = np.log1p(filled[log1p])
    means = {c: float(filled[c].mean()) for c in numeric}
    # A constant column gets std 1 so it standardises to 0 instead of NaN.
    stds = {c: float(filled[c].std(ddof=0)) or 1.0 for c in numeric}
    categories = {c: sorted(features[c].fillna("NA").astype(str).unique().tolist()) for c in categorical}
    return FeatureSpec(numeric, medians, log1p, means, stds, categories)


def transform(spec: FeatureSpec, frame: pd.DataFrame, name: str) -> np.ndarray:
    """Rows of ``frame`` -> float32 matrix with columns ``spec.names``."""
    missing = [c for c in spec.numeric + list(spec.categories) if c not in frame.columns]
    if missing:
        raise PipelineError(f"{name}: missing feature column(s) {missing[:5]}")
    numeric = frame[spec.numeric].apply(pd.to_numeric, errors="coerce")
    not_numbers = [c for c in spec.numeric if numeric[c].isna().sum() > frame[c].isna().sum()]
    if not_numbers:
        raise PipelineError(f"{name}: non-numeric values in numeric column(s) {not_numbers[:5]}")
    numeric = numeric.fillna(spec.medians).astype(float)
    # Clip at 0 before log1p: a negative value in a column whose training values were >= 0.
    numeric[spec.log1p] = np.log1p(numeric[spec.log1p].clip(lower=0))
    numeric = (numeric - pd.Series(spec.means)) / pd.Series(spec.stds)
    blocks = [numeric[spec.numeric].to_numpy(dtype=np.float32)]
    for col, cats in spec.categories.items():
        values = frame[col].fillna("NA").astype(str).to_numpy()
        blocks.append((values[:, None] == np.asarray(cats)[None, :]).astype(np.float32))
    return np.concatenate(blocks, axis=1)


def split_sizes(n_rows: int, val_fraction: float) -> tuple[int, int]:
    """(training rows, validation rows) of ``split_indices``."""
    n_val = int(round(n_rows * val_fraction))
    return n_rows - n_val, n_val


def split_indices(n_rows: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic shuffled split; returns sorted row positions (train, val)."""
    order = np.random.default_rng(seed).permutation(n_rows)
    n_val = split_sizes(n_rows, val_fraction)[1]
    return np.sort(order[n_val:]), np.sort(order[:n_val])
