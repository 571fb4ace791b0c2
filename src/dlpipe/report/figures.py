"""The report's pictures, drawn with matplotlib (Agg) into PNG bytes for data URIs."""

from __future__ import annotations

import io
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # headless: stages run on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dlpipe.pictures.lr_plot import mark_suggestions  # noqa: E402

STYLE = {
    "figure.dpi": 100,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 8,
    "legend.frameon": False,
}
USED_COLOR = "tab:red"
# Line colours by column, so a metric keeps its colour across models.
SERIES_COLORS = {"train_loss": "tab:blue", "val_loss": "tab:orange", "val_rmsle": "tab:orange",
                 "val_accuracy": "tab:green", "lr": "tab:grey"}


def png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


@dataclass(frozen=True)
class UsedLR:
    value: float | None
    how: str  # "lr: auto (valley suggestion)", "set in params.yaml", ...
    schedule: tuple[float, float] | None  # lowest and highest LR logged per epoch in training


def lr_find_figure(record: dict, title: str, used: UsedLR) -> bytes:
    """Loss against LR (log x), every rule's pick and the suggestion (lr_plot.mark_suggestions),
    the LR training used."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.2, 4.6))
        ax.plot(record["lrs"], record["losses"], color="tab:blue", lw=1.6, label="smoothed training loss")
        ax.set_xscale("log")
        mark_suggestions(ax, record, ".3g")
        if used.value is not None:
            ax.axvline(used.value, color=USED_COLOR, ls="--", lw=1.4, label=f"used in training: {used.value:.3g}")
        lrs = np.asarray(record["lrs"], dtype=float)
        ax.set_xlim(lrs.min(), lrs.max())
        if used.schedule and used.schedule[0] < used.schedule[1]:
            # The schedule's range as a bar along the bottom, clipped to the sweep (one-cycle
            # ends far below it): a band over the whole plot would hide the curve.
            low, high = used.schedule
            ax.plot([max(low, lrs.min()), min(high, lrs.max())], [0.03, 0.03], transform=ax.get_xaxis_transform(),
                    color=USED_COLOR, lw=4, alpha=0.5, solid_capstyle="butt",
                    label=f"LR during training: {low:.2g} to {high:.2g}")
        losses = np.asarray(record["losses"], dtype=float)
        low, high = float(np.min(losses)), float(np.percentile(losses, 95))
        span = max(high - low, 1e-12)
        ax.set_ylim(low - 0.08 * span, high + 0.25 * span)  # the divergence tail would flatten the rest
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("training loss")
        ax.set_title(f"{title}: LR range test")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
        fig.tight_layout()
        return png(fig)


def _panels(frame: pd.DataFrame, panels, x: str) -> list[tuple[str, tuple[str, ...], bool | None]]:
    """(title, columns, log_y) per panel; log_y None: log when the values span over 100x."""
    if panels:
        return [(p.title, tuple(c for c in p.columns if c in frame), p.log_y) for p in panels
                if any(c in frame for c in p.columns)]
    columns = [c for c in frame.columns if c not in (x, "epoch", "step", "stage", "lr") and
               pd.api.types.is_numeric_dtype(frame[c])]
    accuracy = tuple(c for c in columns if "acc" in c)
    fid = tuple(c for c in columns if "fid" in c)
    rest = tuple(c for c in columns if c not in accuracy + fid)
    groups = [("loss", rest, None), ("accuracy", accuracy, False), ("FID", fid, None)]
    if "lr" in frame:
        groups.append(("learning rate", ("lr",), True))
    return [group for group in groups if group[1]]


def history_figure(histories: list[tuple[str, pd.DataFrame, tuple[str, str]]], panels, title: str,
                   x: str = "epoch") -> bytes:
    """Per-epoch (or per-step: ``x``) curves; several histories (training stages) run on one
    axis, one after the other, with a line where each later stage starts; the kept epoch is marked."""
    parts, offset, boundaries = [], 0, []
    for i, (label, frame, best) in enumerate(histories):
        frame = frame.copy()
        frame[x] = frame[x] + offset
        if i:
            boundaries.append((offset + 0.5, label))
        parts.append((label, frame, best))
        offset = int(frame[x].max())
    combined = pd.concat([frame for _, frame, _ in parts], ignore_index=True)
    groups = _panels(combined, panels, x)
    dense = len(combined) > 40
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups) + 0.6, 3.3), squeeze=False)
        for ax, (panel_title, columns, log_y) in zip(axes[0], groups):
            for column in columns:
                color = SERIES_COLORS.get(column) or f"C{combined.columns.get_loc(column) % 10}"
                for j, (label, frame, _) in enumerate(parts):  # one colour per column across stages
                    if column in frame:
                        ax.plot(frame[x], frame[column], color=color, lw=1.0 if dense else 1.4,
                                alpha=0.85 if dense else 1, marker=None if len(combined) > 12 else "o", ms=3,
                                label=None if j else column)
            for label, frame, (column, mode) in parts:
                if column in columns and column in frame and frame[column].notna().any():
                    idx = frame[column].idxmin() if mode == "min" else frame[column].idxmax()
                    ax.scatter([frame.loc[idx, x]], [frame.loc[idx, column]], s=60, facecolors="none",
                               edgecolors="black", zorder=5,
                               label=f"kept: {x} {int(frame.loc[idx, x])}" + (f" ({label})" if len(parts) > 1 else ""))
            for position, label in boundaries:
                ax.axvline(position, color="black", ls="--", lw=1)
                ax.annotate(f"{label} starts", (position, 1), xycoords=("data", "axes fraction"), xytext=(3, -10),
                            textcoords="offset points", fontsize=8, va="top")
            values = combined[list(columns)].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            if log_y or (log_y is None and len(values) and values.min() > 0 and values.max() / values.min() > 100):
                ax.set_yscale("log")  # e.g. a first epoch's loss 1000x the rest would flatten the curve
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_xlabel(x)
            ax.set_title(panel_title)
            ax.legend(loc="best")
        fig.suptitle(title, fontsize=11)
        fig.tight_layout()
        return png(fig)


def _price_axis(axis) -> None:
    """Dollar ticks a person reads ($100k), not 10^5 with overlapping minor labels."""
    axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(
        lambda v, _: f"${v / 1e6:g}M" if v >= 1e6 else f"${v / 1e3:g}k"))


def predictions_figure(frame: pd.DataFrame, rmsle: float | None) -> bytes:
    """Validation split: predicted against true price (log-log, y = x), and residuals in log space."""
    outlier = frame["outlier"].astype(str).str.lower().isin(("true", "1")).to_numpy()
    with plt.rc_context(STYLE):
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        lo = float(min(frame["true_price"].min(), frame["predicted_price"].min())) * 0.9
        hi = float(max(frame["true_price"].max(), frame["predicted_price"].max())) * 1.1
        left.plot([lo, hi], [lo, hi], color="black", lw=1, ls="--", label="predicted = true")
        left.scatter(frame["true_price"][~outlier], frame["predicted_price"][~outlier], s=10, alpha=0.6,
                     color="tab:blue", label="houses")
        if outlier.any():
            left.scatter(frame["true_price"][outlier], frame["predicted_price"][outlier], s=28, color="tab:red",
                         marker="x", label="> 4,000 sq ft")
        left.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="true price ($)",
                 ylabel="predicted price ($)", title="predicted vs true (validation split)")
        left.legend(loc="upper left")
        _price_axis(left.xaxis)
        _price_axis(left.yaxis)
        residual = frame["residual_log"].to_numpy(dtype=float)
        right.axhline(0, color="black", lw=1)
        if rmsle is not None:
            right.axhspan(-rmsle, rmsle, color="tab:green", alpha=0.1, lw=0, label=f"+/- RMSLE ({rmsle:.4f})")
        right.scatter(frame["true_price"][~outlier], residual[~outlier], s=10, alpha=0.6, color="tab:blue")
        if outlier.any():
            right.scatter(frame["true_price"][outlier], residual[outlier], s=28, color="tab:red", marker="x")
        right.set(xscale="log", xlabel="true price ($)", ylabel="log(predicted) - log(true)",
                  title="residuals (log space)")
        right.legend(loc="upper right")
        _price_axis(right.xaxis)
        fig.tight_layout()
        return png(fig)


def cv_curve_figure(frame: pd.DataFrame) -> bytes:
    """The cross-validation curve: each fold's validation RMSLE per epoch (thin), their mean
    (thick) and the chosen epoch, the mean's minimum (dashed)."""
    chosen = int(frame["chosen_epoch"].iloc[0])
    folds = [col for col in frame.columns if col.startswith("fold_")]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.2, 3.6))
        for col in folds:
            ax.plot(frame["epoch"], frame[col], lw=0.8, alpha=0.45, label=col.replace("_", " "))
        ax.plot(frame["epoch"], frame["cv_rmsle"], color="black", lw=2, label="mean over the folds")
        best = float(frame.loc[frame["epoch"] == chosen, "cv_rmsle"].iloc[0])
        ax.axvline(chosen, color=USED_COLOR, ls="--", lw=1.4, label=f"chosen: epoch {chosen} ({best:.4f})")
        ax.set(xlabel="epoch", ylabel="validation RMSLE (all held-out rows)",
               title="Cross-validation curve")
        ax.legend(ncol=2)
        fig.tight_layout()
        return png(fig)


def submission_figure(prices: np.ndarray) -> bytes:
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5, 2.8))
        bins = np.logspace(np.log10(prices.min()), np.log10(prices.max()), 40)
        ax.hist(prices, bins=bins, color="tab:blue", alpha=0.8)
        median = float(np.median(prices))
        ax.axvline(median, color="tab:red", ls="--", lw=1.2, label=f"median {median:,.0f}")
        ax.set(xscale="log", xlabel="predicted SalePrice (log scale)", ylabel="test houses",
               title="Kaggle submission: predicted prices")
        _price_axis(ax.xaxis)
        ax.legend()
        fig.tight_layout()
        return png(fig)


def fid_figure(fid: float, floor: float | None, ceiling: float | None) -> bytes:
    """FID on one line between its floor (real against real) and ceiling (untrained generator)."""
    with plt.rc_context({**STYLE, "axes.grid": False}):
        fig, ax = plt.subplots(figsize=(6.2, 1.6))
        points = [v for v in (floor, fid, ceiling) if v is not None]
        lo, hi = min(points), max(points)
        pad = 0.08 * max(hi - lo, 1e-9)
        ax.hlines(0, lo - pad, hi + pad, color="lightgrey", lw=6)
        if floor is not None and ceiling is not None:
            ax.hlines(0, floor, ceiling, color="tab:green", lw=6, alpha=0.35)
        for value, label, color, marker in ((floor, "floor", "tab:green", "|"), (ceiling, "ceiling", "tab:grey", "|"),
                                            (fid, "FID", "tab:red", "v")):
            if value is None:
                continue
            ax.scatter([value], [0.12 if marker == "v" else 0], marker=marker, s=220, color=color, zorder=3,
                       linewidths=2)
            ax.annotate(f"{label}\n{value:.3g}", (value, 0), xytext=(0, 18 if marker == "v" else -30),
                        textcoords="offset points", ha="center", fontsize=8, color=color)
        ax.set_xlim(lo - 2 * pad, hi + 2 * pad)
        ax.set_ylim(-1, 1)
        ax.set_yticks([])
        for side in ("left", "top", "right"):
            ax.spines[side].set_visible(False)
        ax.set_xlabel("FID in LeNet feature space (lower is better)")
        fig.tight_layout()
        return png(fig)


def class_share_figure(names: list[str], shares: np.ndarray) -> bytes:
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.4, 3.0))
        ax.bar(range(len(names)), shares, color="tab:blue")
        ax.axhline(1 / max(len(names), 1), color="black", ls="--", lw=1)
        ax.set_xticks(range(len(names)), names, rotation=45 if max(map(len, names)) > 2 else 0)
        ax.set(xlabel="class (LeNet's prediction)", ylabel="share of generated samples",
               title="What the generator draws")
        fig.tight_layout()
        return png(fig)
