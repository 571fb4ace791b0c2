"""Figure 7: where the houses MLP stands, scikit-learn's RidgeCV and GradientBoostingRegressor on its folds.

Each baseline is fitted on every fold's fitting rows and scored on its held-out
rows, exactly the tensors cv_houses trains on (prepare_houses'
``cv_fold<i>.pt``: the same fold assignment, the same features fitted on the
fitting rows alone, the same clipped held-out rows, the same outliers left out
of fitting and scored). A fold's figure is the RMSLE over all its held-out rows;
the model's figure the mean over the folds, with their sample standard
deviation, as ``cv_rmsle``. The MLP's own figure is read from cv_houses' record
(reports/cv/houses.json), which must describe the same folds.

The baselines' settings are fixed here, not params of the pipeline: RidgeCV
picks its penalty per fold by its own leave-one-out search over ``RIDGE_ALPHAS``;
the boosted trees are a common Kaggle setting for this competition (Huber loss,
3,000 trees of depth 4, learning rate 0.05), 1.5 to 3 minutes per fold on one
core of the 2-core AMD EPYC, depending on its load; ``--quick`` fits 20 trees.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-1, 3, 30))  # L2 penalties tried, 0.1 to 1000
GBM = {"loss": "huber", "n_estimators": 3000, "learning_rate": 0.05, "max_depth": 4, "random_state": 0}
QUICK_TREES = 20


def baselines(trees: int = GBM["n_estimators"]) -> dict[str, Callable[[], object]]:
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import RidgeCV

    return {"ridge": lambda: RidgeCV(alphas=RIDGE_ALPHAS),
            "gbm": lambda: GradientBoostingRegressor(**{**GBM, "n_estimators": trees})}


def summarise(fold_rmsle: list[float]) -> dict:
    return {"cv_rmsle": float(np.mean(fold_rmsle)),
            "cv_rmsle_sd": float(np.std(fold_rmsle, ddof=1)) if len(fold_rmsle) > 1 else None,
            "cv_fold_rmsle": [float(v) for v in fold_rmsle]}


def score_folds(folds: list[dict], make: Callable[[], object]) -> dict:
    """One baseline on every fold: its per-fold RMSLE in log-price space, and the seconds it took."""
    start, scores = time.perf_counter(), []
    for fold in folds:
        model = make().fit(fold["fit_x"].double().numpy(), fold["fit_y"].double().numpy())
        error = model.predict(fold["val_x"].double().numpy()) - fold["val_y"].double().numpy()
        scores.append(float(np.sqrt(np.mean(error ** 2))))
    return {**summarise(scores), "seconds": time.perf_counter() - start}


def houses_cv(folder: Path, record: Path, quick: bool = False, log: Callable[[str], None] = print) -> dict:
    """Every baseline on the prepared folds in ``folder``, beside the MLP's ``record``."""
    from dlpipe.data.houses_prepared import load_split
    from dlpipe.stages.cv_houses import prepared_folds

    folds = [load_split(f"cv_fold{i}", folder=folder) for i in range(prepared_folds(folder))]
    trees = QUICK_TREES if quick else GBM["n_estimators"]
    result = {"folds": len(folds), "gbm_settings": {**GBM, "n_estimators": trees}, "ridge_alphas": list(RIDGE_ALPHAS)}
    for name, make in baselines(trees).items():
        result[name] = score_folds(folds, make)
        log(f"  houses {name}: cv_rmsle {result[name]['cv_rmsle']:.4f} over {len(folds)} folds "
            f"({result[name]['seconds']:.0f} s)")
    if record.is_file():
        mlp = json.loads(record.read_text())
        if mlp.get("cv_folds") == len(folds):
            result["mlp"] = {key: mlp[key] for key in ("cv_rmsle", "cv_rmsle_sd", "cv_fold_rmsle", "cv_epoch")}
            log(f"  houses MLP (cv_houses): cv_rmsle {mlp['cv_rmsle']:.4f}")
    return result
