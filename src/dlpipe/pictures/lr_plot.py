"""The LR range test shown to people: its picture (loss against LR on a log axis,
suggestions marked) and the cautions the stage logs and the report prints."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: stages run on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from dlpipe.io import atomic_path  # noqa: E402

log = logging.getLogger(__name__)

# One colour per rule, in this picture and in the report's (dlpipe.report.figures).
RULE_COLORS = {"valley": "tab:green", "steepest": "tab:orange", "min_div_10": "tab:purple"}


def mark_suggestions(ax, record: dict, fmt: str) -> None:
    """Each rule's own pick dotted, the suggestion (the chosen rule's, after the guard
    against picks at or past the minimum) solid, the minimum a black dot. Records written
    before the guard have only ``suggestions``. ``fmt``: the number format of the labels."""
    picks = record.get("rules", record["suggestions"])
    for rule, lr in picks.items():
        past = " (at or past the minimum)" if rule in record.get("past_min", ()) else ""
        ax.axvline(lr, color=RULE_COLORS.get(rule, "grey"), ls=":", lw=1, label=f"{rule}: {lr:{fmt}}{past}")
    chosen = record["rule"]
    ax.axvline(record["suggested_lr"], color=RULE_COLORS.get(chosen, "grey"), ls="-", lw=1.6,
               label=f"suggested ({chosen}{', guarded' if chosen in record.get('past_min', ()) else ''}): "
                     f"{record['suggested_lr']:{fmt}}")
    if "lr_at_min" in record:
        at = record["lrs"].index(record["lr_at_min"])
        ax.scatter([record["lr_at_min"]], [record["losses"][at]], color="black", s=18, zorder=4,
                   label=f"loss minimum at {record['lr_at_min']:{fmt}}")


def cautions(record: dict) -> list[str]:
    """What a person should know before trusting the record's ``suggested_lr``; the stage's
    log (plot_lr_find) and the report page both say it. Records written before the guard
    have no such keys."""
    lines = []
    if record.get("rule") in record.get("past_min", ()):
        lines.append(f"the {record['rule']} rule's pick {record['rules'][record['rule']]:.3g} is at or past the "
                     f"loss minimum's LR {record['lr_at_min']:.3g}: suggested {record['suggested_lr']:.3g} "
                     "(the minimum's LR / 10) instead")
    disagreement = record.get("disagreement", {})
    if disagreement.get("flagged"):
        picks = ", ".join(f"{name} {lr:.3g}" for name, lr in record["rules"].items())
        lines.append(f"the rules disagree: their picks ({picks}) span {disagreement['ratio']:.3g}x, more than "
                     f"{disagreement['factor']:g}x; look at the curve before trusting lr: auto")
    return lines


def plot_lr_find(record: dict, png_path: Path, title: str) -> None:
    """The stage's picture; its cautions, also in the picture's title, go to the log as warnings."""
    for line in cautions(record):
        log.warning("%s: %s", png_path, line)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(record["lrs"], record["losses"], color="tab:blue", label="smoothed loss")
    ax.set_xscale("log")
    mark_suggestions(ax, record, ".2g")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    disagree = " - the rules disagree" if record.get("disagreement", {}).get("flagged") else ""
    ax.set_title(f"{title}: LR range test (chosen rule: {record['rule']}){disagree}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
