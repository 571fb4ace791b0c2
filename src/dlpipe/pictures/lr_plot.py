"""The LR range test picture: loss against LR on a log axis, suggestions marked."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: stages run on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from dlpipe.io import atomic_path  # noqa: E402


def plot_lr_find(record: dict, png_path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(record["lrs"], record["losses"], color="tab:blue", label="smoothed loss")
    ax.set_xscale("log")
    colors = {"valley": "tab:green", "steepest": "tab:orange", "min_div_10": "tab:purple"}
    for rule, lr in record["suggestions"].items():
        style = "-" if rule == record["rule"] else ":"
        ax.axvline(lr, color=colors.get(rule, "grey"), linestyle=style, label=f"{rule}: {lr:.2g}")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(f"{title}: LR range test (chosen rule: {record['rule']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
