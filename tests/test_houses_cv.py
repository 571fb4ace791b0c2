"""The houses MLP's linear skip path and cv_houses' rule, on small synthetic folds: the
chosen epoch is the mean validation curve's minimum, cv_rmsle the mean of the folds'
RMSLEs there, the submission the mean of every fold model's test predictions at it,
and the same inputs give the same bits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_params
from dlpipe.config import load_params
from dlpipe.models.mlp import HouseMLP
from dlpipe.stages import cv_houses

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def params(tmp_path):
    """The default params with a short cross-validation (4 epochs, 2 seeds, small batches)."""
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    write_params(path, {"device": "cpu", "houses.cv.epochs": 4, "houses.cv.n_seeds": 2,
                        "houses.train.batch_size": 16, "houses.train.lr": 0.01})
    return load_params(path)


def synthetic_folds(count: int = 3, features: int = 6) -> list[dict[str, torch.Tensor]]:
    """cv_fold<i>.pt's layout: log-prices about 12, partly linear in the features."""
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(features, generator=generator)
    folds = []
    for fold in range(count):
        x = torch.randn(80, features, generator=generator)
        y = 12.0 + 0.3 * (x @ weights) + 0.1 * torch.tanh(x[:, 0] * x[:, 1])
        folds.append({"fit_x": x[:60], "fit_y": y[:60], "val_x": x[60:], "val_y": y[60:],
                      "val_outlier": torch.arange(20) == fold, "test_x": torch.linspace(-1, 1, 5 * features,
                                                                                        ).reshape(5, features)})
    return folds


def test_the_skip_path_starts_at_zero_and_learns_the_linear_part():
    torch.manual_seed(3)
    plain = HouseMLP(6, (8, 4), output_bias=12.0)
    torch.manual_seed(3)
    skip = HouseMLP(6, (8, 4), output_bias=12.0, skip=True)
    assert set(skip.state_dict()) - set(plain.state_dict()) == {"skip.weight"}
    assert skip.skip.weight.shape == (1, 6) and not skip.skip.weight.any()
    x = torch.randn(10, 6)
    assert torch.equal(skip(x), plain(x))  # the same net, the skip path at zero
    # A linear target: one Adam step moves the skip weights, and with them the output.
    y = 12.0 + x @ torch.arange(6.0)
    optimizer = torch.optim.Adam(skip.parameters(), lr=0.01)
    torch.sqrt(torch.mean((skip(x) - y) ** 2)).backward()
    optimizer.step()
    assert skip.skip.weight.abs().min() > 0
    assert not torch.equal(skip(x), plain(x))


def test_the_chosen_epoch_is_the_mean_curves_minimum_and_the_bag_is_every_fold_models_mean(params):
    folds, device, lr = synthetic_folds(), torch.device("cpu"), params.houses.train.lr
    result = cv_houses.cross_validate(params, folds, lr, device)
    record, curves = result["record"], result["curves"]
    assert curves.shape == (3, params.houses.cv.epochs)
    chosen = int(np.argmin(curves.mean(axis=0)))
    assert record["cv_epoch"] == chosen + 1 and record["cv_epochs_run"] == params.houses.cv.epochs
    assert record["cv_rmsle"] == pytest.approx(curves.mean(axis=0)[chosen], rel=1e-12)
    assert record["cv_fold_rmsle"] == pytest.approx(curves[:, chosen].tolist(), rel=1e-12)
    assert record["cv_rmsle"] == pytest.approx(np.mean(record["cv_fold_rmsle"]), rel=1e-12)
    assert record["cv_rmsle_sd"] == pytest.approx(np.std(record["cv_fold_rmsle"], ddof=1), rel=1e-12)
    assert record["cv_folds"] == 3 and record["cv_seeds"] == 2 and record["cv_held_out_rows"] == [20, 20, 20]
    # By hand: every fold model (fold x seed) on its own, then the rule.
    seeds = cv_houses.seeds(params.seed, 2)
    runs = [[cv_houses.fold_predictions(params, fold, seed, lr, device) for seed in seeds] for fold in folds]
    by_hand = np.stack([cv_houses.rmsle(np.mean([val for val, _ in fold_runs], axis=0), fold["val_y"].double().numpy())
                        for fold_runs, fold in zip(runs, folds)])
    np.testing.assert_array_equal(by_hand, curves)
    bag = np.mean([test[chosen] for fold_runs in runs for _, test in fold_runs], axis=0)
    np.testing.assert_allclose(result["test_log_price"], bag, rtol=0, atol=1e-12)
    # Without the outliers: each fold's flagged row (one each here) left out of its RMSLE.
    val_pred = np.mean([val for val, _ in runs[0]], axis=0)[chosen]
    keep = ~folds[0]["val_outlier"].numpy()
    assert record["cv_fold_rmsle_without_outliers"][0] == pytest.approx(
        cv_houses.rmsle(val_pred[keep], folds[0]["val_y"].double().numpy()[keep]), rel=1e-12)


def test_the_cross_validation_is_deterministic_and_its_seeds_distinct(params):
    folds, device = synthetic_folds(2), torch.device("cpu")
    first = cv_houses.cross_validate(params, folds, params.houses.train.lr, device)
    second = cv_houses.cross_validate(params, folds, params.houses.train.lr, device)
    assert first["record"] == second["record"]
    assert np.array_equal(first["curves"], second["curves"])
    assert np.array_equal(first["test_log_price"], second["test_log_price"])
    assert cv_houses.curve_csv(first["curves"], 2) == cv_houses.curve_csv(second["curves"], 2)
    seeds = cv_houses.seeds(params.seed, 5)
    assert len(set(seeds)) == 5 and seeds[:2] == cv_houses.seeds(params.seed, 2)
    assert cv_houses.seeds(params.seed + 1, 2) != seeds[:2]


def test_the_curve_table_marks_the_chosen_epoch_on_every_row():
    curves = np.array([[0.3, 0.2, 0.25], [0.5, 0.4, 0.1]])
    lines = cv_houses.curve_csv(curves, 3).splitlines()
    assert lines[0] == "epoch,cv_rmsle,chosen_epoch,fold_1,fold_2"
    assert lines[1:] == ["1,0.400000,3,0.300000,0.500000", "2,0.300000,3,0.200000,0.400000",
                         "3,0.175000,3,0.250000,0.100000"]
