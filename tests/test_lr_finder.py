"""LR range test on a problem whose good LR range is known in closed form.

Least squares with inputs x ~ N(0, I): the MSE's Hessian is 2 E[x x^T] = 2 I,
so plain SGD converges fastest near lr = 1/2 and diverges above lr = 2/2 = 1.
A sound suggestion lies below the divergence edge and well above the LRs at
which nothing moves.
"""

import numpy as np
import pytest
import torch
from torch_lr_finder import LRFinder

from dlpipe.config import LRRangeTest
from dlpipe.data.loaders import TensorLoader
from dlpipe.training import lr_finder

DIVERGENCE_EDGE = 1.0


def least_squares(seed=0, n=4096, d=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g)
    return x, (x @ w).squeeze(-1)


class Linear(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = torch.nn.Linear(d, 1, bias=False)
        torch.nn.init.zeros_(self.fc.weight)

    def forward(self, x):
        return self.fc(x).squeeze(-1)


def mse(out, target):
    return torch.mean((out - target) ** 2)


CFG = LRRangeTest(start_lr=1e-5, end_lr=10.0, num_iter=100, step_mode="exp", smooth=0.05,
             diverge_threshold=5.0, rule="valley")


def run_range_test(cfg=CFG):
    x, y = least_squares()
    torch.manual_seed(0)
    model = Linear(x.shape[1])
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.start_lr)
    loader = TensorLoader(x, y, batch_size=256, shuffle=True, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    record = lr_finder.range_test(model, optimizer, mse, loader, cfg, torch.device("cpu"))
    return record, model, optimizer, before


def train_loss_after(lr, steps=15):
    x, y = least_squares()
    model = Linear(x.shape[1])
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loader = TensorLoader(x, y, batch_size=256, shuffle=True, seed=1)
    it = iter(loader)
    for _ in range(steps):
        xb, yb = next(it)
        opt.zero_grad()
        mse(model(xb), yb).backward()
        opt.step()
    return mse(model(x), y).item()


def test_suggestions_fall_in_the_known_good_range():
    record, *_ = run_range_test()
    assert record["diverged"], "the sweep to lr=10 must cross the divergence edge at 1"
    assert max(record["lrs"]) > DIVERGENCE_EDGE
    for rule, lr in record["suggestions"].items():
        assert 0.01 < lr < DIVERGENCE_EDGE, (rule, lr)
    # The suggestion trains: far lower loss after 15 steps than an LR 100x smaller.
    assert train_loss_after(record["suggested_lr"]) < 0.1 * train_loss_after(record["suggested_lr"] / 100)


def test_model_and_optimizer_are_restored():
    record, model, optimizer, before = run_range_test()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert optimizer.param_groups[0]["lr"] == pytest.approx(CFG.start_lr)


def test_linear_sweep_steps_evenly():
    cfg = LRRangeTest(start_lr=0.01, end_lr=0.5, num_iter=20, step_mode="linear", smooth=0.0,
                 diverge_threshold=5.0, rule="min_div_10")
    record, *_ = run_range_test(cfg)
    steps = np.diff(record["lrs"])
    assert np.allclose(steps, steps[0]), "a linear sweep has equal LR steps"
    assert record["suggested_lr"] == pytest.approx(record["lrs"][int(np.argmin(record["losses"]))] / 10)


def test_steepest_matches_torch_lr_finder_suggestion():
    """torch-lr-finder's own suggestion (steepest slope, same skips) on the same curve."""
    record, *_ = run_range_test()
    x, y = least_squares()
    torch.manual_seed(0)
    model = Linear(x.shape[1])
    finder = LRFinder(model, torch.optim.SGD(model.parameters(), lr=CFG.start_lr), mse)
    finder.history = {"lr": record["lrs"], "loss": record["losses"]}
    import matplotlib

    matplotlib.use("Agg")
    _, theirs = finder.plot(skip_start=10, skip_end=5, suggest_lr=True, show_lr=None)
    # Exponential steps: slope against the index is proportional to slope against log(lr).
    assert lr_finder.suggest_steepest(np.array(record["lrs"]), np.array(record["losses"])) == pytest.approx(theirs)


def test_valley_picks_inside_the_longest_descent():
    lrs = np.logspace(-6, 0, 61)
    # Flat, then a steady fall between 1e-4 and 1e-2, then a blow-up.
    losses = np.where(lrs < 1e-4, 2.0, np.where(lrs < 1e-2, 2.0 - np.log10(lrs / 1e-4), 0.1 + (lrs * 100) ** 2))
    lr = lr_finder.suggest_valley(lrs, losses)
    assert 1e-4 < lr < 1e-2


def test_resolve_lr_auto_without_range_test_names_the_key(tmp_path):
    from dlpipe.errors import PipelineError

    with pytest.raises(PipelineError, match="houses.train.lr.*does not exist"):
        lr_finder.resolve_lr("auto", tmp_path / "missing.json", "houses.train.lr")
    assert lr_finder.resolve_lr(0.003, tmp_path / "missing.json", "houses.train.lr") == 0.003
