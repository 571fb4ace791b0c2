"""reports/index.html: every model's metrics, curves and pictures on one page.

The page is self-contained: pictures are PNG data URIs, the CSS is inline, and
a Content-Security-Policy forbids loading anything else, so it opens from disk
with no server and no network. It is built with Jinja2
(templates/index.html.j2) from plain data gathered here; the model sections
follow ``dlpipe.report.registry`` and show only what dvc.yaml produces.
"""

from __future__ import annotations

import base64
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import jinja2
import numpy as np
import pandas as pd
import yaml

from dlpipe import layouts
from dlpipe.pictures import lr_plot
from dlpipe.report import figures
from dlpipe.report.compare import Comparison, compare
from dlpipe.report.registry import MODELS, Model
from dlpipe.training import live, lr_finder
from dlpipe.workflow_graph import load_stages

log = logging.getLogger(__name__)
TEMPLATES = Path(__file__).resolve().parent / "templates"


# --------------------------------------------------------------------------- formatting


def fmt(value) -> str:
    """A metric for people: whole numbers as such, the rest to 4 significant digits."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if float(value).is_integer() and abs(value) < 1e9:
        return f"{int(value):,}" if abs(value) >= 1e4 else str(int(value))
    return f"{value:.4g}"


def fmt_diff(diff: float | None, old: float | None) -> str:
    if diff is None:
        return "–"
    if diff == 0:
        return "0"
    text = f"{diff:+.3g}"
    if old:
        text += f" ({diff / abs(old):+.1%})"
    return text


def direction_class(diff: float | None, better: str) -> str:
    """CSS class of a change: better, worse, or neutral (no change or no direction)."""
    if diff is None or diff == 0 or not better:
        return "same"
    return "better" if (diff < 0) == (better == "lower") else "worse"


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def dotted(raw: dict, key: str):
    node = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


# --------------------------------------------------------------------------- page data


@dataclass
class Section:
    name: str
    title: str
    summary: str
    metrics_path: str
    blocks: list[dict] = field(default_factory=list)
    all_metrics: list[dict] = field(default_factory=list)  # per metrics file: {path, rows}
    params_yaml: str = ""


def declared(path: str, outs: set[str]) -> bool:
    """Produced by a dvc.yaml stage: an out itself, inside an out folder, or a folder holding outs."""
    p = PurePosixPath(path)
    return any(p == PurePosixPath(out) or PurePosixPath(out) in p.parents or p in PurePosixPath(out).parents
               for out in outs)


def metric_rows(metrics: dict[str, float]) -> list[dict]:
    return [{"key": key, "value": value, "text": fmt(value)} for key, value in metrics.items()]


def read_declared(root: Path, rel: str, **read_csv):
    """A file another stage wrote, checked against the layout its writer declares
    (``dlpipe.layouts``): a damaged one stops the report with one line naming it."""
    if PurePosixPath(rel).parent.as_posix() == "reports/lr_find":
        return lr_finder.read_record(root / rel)
    layout = layouts.for_path(rel)
    if layout is None:
        raise TypeError(f"{rel}: no layout declared for it in dlpipe (the report reads declared files only)")
    return layout.read(root / rel, **read_csv) if isinstance(layout, layouts.CsvFile) else layout.read(root / rel)


def read_metrics(root: Path, rel: str) -> dict[str, float]:
    data = read_declared(root, rel)
    return {k: v for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def used_lr(lr, record: dict, raw: dict, root: Path, earlier: dict[str, figures.UsedLR]) -> figures.UsedLR:
    """The LR training ran with: params' number, the suggestion under ``lr: auto``, or a
    multiple of another stage's (``LRCurve.relative``); with the range the schedule swept,
    from the training history's lr series. ``earlier``: the model's LRs so far, by label."""
    schedule = None
    if lr.history and (root / lr.history).is_dir():
        column = history_frame(root / lr.history).get("lr")
        if column is not None and column.notna().any():
            schedule = (float(column.min()), float(column.max()))
    value = dotted(raw, lr.lr_param) if lr.lr_param else None
    if value == "auto":
        return figures.UsedLR(float(record["suggested_lr"]), f"{lr.lr_param}: auto", schedule)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return figures.UsedLR(float(value), f"{lr.lr_param} in params.yaml", schedule)
    for name, label, factor in lr.relative:
        if value == name and earlier.get(label) and earlier[label].value is not None:
            return figures.UsedLR(earlier[label].value * factor, f"{lr.lr_param}: {name}", schedule)
    if schedule:
        return figures.UsedLR(schedule[1], "highest LR in the training history", schedule)
    return figures.UsedLR(None, "", None)


def history_frame(folder: Path, per_step: bool = False) -> pd.DataFrame:
    """A training stage's DVCLive series as one frame, a row per epoch (``per_step``:
    the means of each epoch's steps, NaN steps left out)."""
    if per_step:
        frame = pd.DataFrame(live.read_history(folder, "step"))
        return frame.drop(columns="step").groupby("epoch", as_index=False).mean()
    return pd.DataFrame(live.read_history(folder, "epoch"))


def training_table(histories, frames, used_by_history: dict, raw: dict) -> dict:
    """Per training stage: epochs run, the kept epoch and its score, the LR and the
    optimizer settings (``History.train``)."""
    header = [""] + [h.label for h in histories]
    rows: list[list[str]] = [["epochs run"] + [str(int(frame["epoch"].max()) if "epoch" in frame else len(frame))
                                               for frame in frames]]
    kept, score = ["kept epoch"], ["best"]
    for history, frame in zip(histories, frames):
        column, mode = history.best
        if column in frame and frame[column].notna().any():
            idx = frame[column].idxmin() if mode == "min" else frame[column].idxmax()
            kept.append(str(int(frame.loc[idx, "epoch"])))
            score.append(f"{column} {fmt(float(frame.loc[idx, column]))}")
        else:
            kept.append("last")
            score.append("–")
    rows += [row for row in (kept, score) if any(cell != "–" for cell in row[1:])]
    lrs = []
    for history in histories:
        used = used_by_history.get(history.live)
        value = dotted(raw, f"{history.train}.lr") if history.train else None
        if used and used.value is not None:
            lrs.append(f"{used.value:.3g}" + (" (auto)" if used.how.endswith(": auto") else ""))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            lrs.append(f"{value:.3g}")
        else:
            lrs.append("–")
    rows.append(["LR (peak of the schedule)"] + lrs)
    for key, label in (("optimizer.name", "optimizer"), ("schedule.name", "schedule"), ("batch_size", "batch size"),
                       ("optimizer.weight_decay", "weight decay")):
        values = []
        for history in histories:
            value = dotted(raw, f"{history.train}.{key}") if history.train else None
            values.append(fmt(value) if value is not None else "–")
        if any(v != "–" for v in values):
            rows.append([label] + values)
    return _table("Training", header, rows, wide=len(histories) > 1)


def evenly(items: list, most: int) -> list:
    """At most ``most`` items, evenly spaced, the first and the last included (0: all)."""
    if not most or len(items) <= most:
        return list(items)
    picks = sorted({round(i * (len(items) - 1) / (most - 1)) for i in range(most)})
    return [items[i] for i in picks]


def picture_name(path: Path) -> str:
    """epoch_007.png -> "epoch 7"."""
    match = re.fullmatch(r"(.*?)[_ -]?0*(\d+)", path.stem)
    return f"{match.group(1).replace('_', ' ')} {match.group(2)}".strip() if match else path.stem.replace("_", " ")


def _figure(title: str, png: bytes, caption: str = "", wide: bool = False, cautions: list[str] = ()) -> dict:
    """``cautions``: lines printed in the figure's card, marked, above the picture."""
    return {"kind": "figure", "title": title, "src": data_uri(png), "caption": caption, "wide": wide,
            "cautions": list(cautions)}


def _table(title: str, header: list[str], rows: list[list[str]], numeric: bool = True, wide: bool = False) -> dict:
    """``numeric``: the columns after the first hold numbers (right-aligned); else wrapped text."""
    return {"kind": "table", "title": title, "header": header, "rows": rows, "numeric": numeric, "wide": wide}


# extras: model-specific blocks from the model's other outputs


def houses_predictions(model: Model, metrics: dict, root: Path, csv: str) -> list[dict]:
    frame = read_declared(root, csv)
    rmsle = metrics.get("val_rmsle")
    caption = (f"{len(frame)} validation houses; points on the dashed line are priced exactly. Residuals "
               "are in log space, the RMSLE's units: 0.1 is about 10% off.")
    return [_figure("Predicted vs true price on the validation split, and residuals",
                    figures.predictions_figure(frame, rmsle), caption, wide=True)]


def houses_cv(model: Model, metrics: dict, root: Path, curve_csv: str, record_json: str) -> list[dict]:
    frame = read_declared(root, curve_csv)
    record = read_declared(root, record_json)
    caption = (f"{record['cv_folds']} folds, {record['cv_seeds']} seed(s) each, {record['cv_epochs_run']} epochs: a "
               "fold's RMSLE is that of its seeds' mean prediction on all its held-out rows; the chosen epoch "
               "is the mean curve's minimum, and the submission averages every fold model's test prediction "
               "there.")
    rows = [[f"fold {i + 1}", fmt(value), fmt(without)] for i, (value, without) in enumerate(
        zip(record["cv_fold_rmsle"], record["cv_fold_rmsle_without_outliers"]))]
    rows.append(["mean (sd)", f"{fmt(record['cv_rmsle'])} ({fmt(record['cv_rmsle_sd'])})",
                 fmt(record["cv_rmsle_without_outliers"])])
    return [_figure("Cross-validation: validation RMSLE per epoch", figures.cv_curve_figure(frame), caption),
            _table(f"RMSLE per fold at epoch {record['cv_epoch']} ({record_json})",
                   ["", "all held-out rows", "without the outliers"], rows)]


def submission(model: Model, metrics: dict, root: Path, csv: str) -> list[dict]:
    frame = read_declared(root, csv)
    prices = frame["SalePrice"].to_numpy(dtype=float)
    rows = [["rows (test houses)", f"{len(frame):,}"], ["Ids", f"{frame['Id'].min()}–{frame['Id'].max()}"],
            ["lowest SalePrice", f"{prices.min():,.0f}"], ["median SalePrice", f"{np.median(prices):,.0f}"],
            ["highest SalePrice", f"{prices.max():,.0f}"], ["mean SalePrice", f"{prices.mean():,.0f}"]]
    return [_table(f"Kaggle submission ({csv})", ["", "value"], rows),
            _figure("Submission prices", figures.submission_figure(prices))]


def dcgan_fid(model: Model, metrics: dict, root: Path, record_json: str) -> list[dict]:
    if "fid" not in metrics:
        return []
    png = figures.fid_figure(metrics["fid"], metrics.get("fid_floor"), metrics.get("fid_ceiling"))
    samples = f" on {fmt(metrics['fid_samples'])} images each" if "fid_samples" in metrics else ""
    caption = (f"Fréchet distance between generated and real images in the LeNet's feature space{samples}. "
               "The floor is the distance between two disjoint sets of real images (what a perfect generator "
               "would reach), the ceiling that of the untrained generator.")
    record = read_declared(root, record_json)
    rows = [[key.replace("_", " "), value] for key, value in record.items() if isinstance(value, str)]
    return [_figure("FID with its floor and ceiling", png, caption),
            _table(f"How the FID samples were drawn ({record_json})", ["", ""], rows, numeric=False)]


CLASS_METRICS_NOTE = "class_metrics"  # evaluate_dcgan's note in place of the class metrics (a folder of pictures)


def class_metrics_note(root: Path, details: str) -> str | None:
    """The details file's word on why the class metrics are absent, if it has one."""
    note = read_declared(root, details).get(CLASS_METRICS_NOTE)
    return note if isinstance(note, str) else None


def class_shares(model: Model, metrics: dict, root: Path, csv: str, details: str) -> list[dict]:
    note = class_metrics_note(root, details)
    if note is not None:
        why = note.removeprefix("omitted: ")
        return [{"kind": "note", "text": "No class metrics (classes of generated samples, smallest class share, "
                                         f"mean classifier confidence): {why}."}]
    frame = read_declared(root, csv, dtype={"class": str})
    caption = ("The LeNet's class of each generated sample: a missing bar is a mode the generator dropped; "
               "the dashed line is an even share.")
    return [_figure("Classes of generated samples", figures.class_share_figure(
        frame["class"].tolist(), frame["share"].to_numpy(dtype=float)), caption)]


def mistakes(model: Model, metrics: dict, root: Path, records_json: str) -> list[dict]:
    """The most frequent confusions, from the records DVC's confusion template draws."""
    records = read_declared(root, records_json)
    pairs = pd.DataFrame(records)
    wrong = pairs[pairs["actual"] != pairs["predicted"]]
    counts = wrong.groupby(["actual", "predicted"]).size().sort_values(ascending=False, kind="stable")
    per_class = pairs.groupby("actual").size()
    rows = [[str(a), str(p), str(n), f"{n / per_class[a]:.1%}"] for (a, p), n in counts.head(8).items()]
    title = f"Most frequent mistakes ({len(wrong)} of {len(pairs)} test images wrong)"
    if not rows:
        return [{"kind": "note", "text": f"No mistakes on the {len(pairs)} test images."}]
    return [_table(title, ["actual", "predicted", "images", "share of the actual class"], rows)]


EXTRAS = {"houses_predictions": houses_predictions, "houses_cv": houses_cv, "submission": submission,
          "dcgan_fid": dcgan_fid,
          "class_shares": class_shares, "mistakes": mistakes}


def model_section(model: Model, outs: set[str], raw: dict, root: Path, notes: list[str]) -> Section:
    metrics = read_metrics(root, model.metrics)
    section = Section(model.name, model.title, model.summary, model.metrics)

    def present(path: str) -> bool:
        if not declared(path, outs):
            return False
        if not (root / path).exists():
            notes.append(f"{path} is declared in dvc.yaml but missing: run `dvc repro`.")
            return False
        return True

    used_by_history: dict[str, figures.UsedLR] = {}
    used_by_label: dict[str, figures.UsedLR] = {}
    for lr in model.lr_finds:
        if present(lr.json):
            record = read_declared(root, lr.json)
            used = used_lr(lr, record, raw, root, used_by_label)
            used_by_history[lr.history] = used_by_label[lr.label] = used
            caption = (f"Suggested by the {record.get('rule')} rule: {record['suggested_lr']:.3g}. "
                       + (f"Training used {used.value:.3g} ({used.how})." if used.value is not None else ""))
            section.blocks.append(_figure(f"LR range test: {lr.label}", figures.lr_find_figure(
                record, f"{model.title} ({lr.label})" if len(model.lr_finds) > 1 else model.title, used), caption,
                cautions=lr_plot.cautions(record)))

    present_histories = [h for h in model.histories if present(h.series)]
    frames = [history_frame(root / h.live, h.per_step) for h in present_histories]
    if present_histories:
        section.blocks.append(training_table(present_histories, frames, used_by_history, raw))
    # Histories sharing a figure title run on one epoch axis, one stage after the other.
    for title in dict.fromkeys(h.figure or model.title for h in present_histories):
        members = [(h, frame) for h, frame in zip(present_histories, frames) if (h.figure or model.title) == title]
        group = [(h.label, frame, h.best) for h, frame in members]
        caption = " ".join(text for text, shown in (
            ("Circles mark the epoch whose weights were kept.", any(best[0] for _, _, best in group)),
            ("Dashed lines: where the next training stage starts.", len(group) > 1)) if shown)
        heading = "Training and validation curves" + ("" if title == model.title else f": {title}")
        section.blocks.append(_figure(heading, figures.history_figure(group, model.panels, title),
                                      caption, wide=True))

    for picture in model.pictures:
        if not present(picture.path):
            continue
        path = root / picture.path
        if path.is_dir():
            files = sorted(path.glob("*.png"))
            shown = evenly(files, picture.most)
            if shown:
                title = picture.caption + (f" ({len(shown)} of {len(files)}, evenly spaced; all in {picture.path}/)"
                                           if len(shown) < len(files) else f" ({picture.path}/)")
                section.blocks.append({"kind": "gallery", "title": title, "images": [
                    {"src": data_uri(f.read_bytes()), "caption": picture_name(f)} for f in shown]})
        else:
            section.blocks.append({"kind": "figure", "title": picture.caption, "src": data_uri(path.read_bytes()),
                                   "caption": picture.path, "wide": False})

    for extra in model.extras:
        if all(present(path) for path in extra.files):
            section.blocks.extend(EXTRAS[extra.name](model, metrics, root, *extra.files))

    section.all_metrics = [{"path": model.metrics, "rows": metric_rows(metrics)}]
    for path in model.more_metrics:
        if present(path):
            section.all_metrics.append({"path": path, "rows": metric_rows(read_metrics(root, path))})
    shown = {key: dotted(raw, key) for key in model.params if dotted(raw, key) is not None}
    section.params_yaml = yaml.safe_dump(shown, sort_keys=False, default_flow_style=None, width=100)
    return section


def summary_rows(models: list[Model], metrics: dict[str, dict], comparison: Comparison) -> list[dict]:
    rows = []
    for model in models:
        values = metrics[model.name]
        for headline in model.headline:
            if headline.key not in values:
                continue
            value = values[headline.key]
            old = comparison.old(model.metrics, headline.key)
            diff = None if old is None else value - old
            rows.append({
                "model": model.title, "model_name": model.name, "file": model.metrics, "key": headline.key,
                "label": headline.label, "value": value, "text": fmt(value), "old": fmt(old),
                "old_value": old, "diff": fmt_diff(diff, old), "diff_value": diff,
                "class": direction_class(diff, headline.better),
                "better": {"lower": "lower is better", "higher": "higher is better"}.get(headline.better, ""),
            })
    return rows


def params_rows(comparison: Comparison) -> list[list[str]]:
    rows = []
    for path, keys in sorted(comparison.params.items()):
        for key, (old, new) in sorted(keys.items()):
            rows.append([key, fmt(old), fmt(new), path])
    return rows


def context(raw: dict, root: Path = Path("."), params_text: str = "") -> dict:
    outs = {out for stage in load_stages(root / "dvc.yaml") for out in stage.outs}
    models = [m for m in MODELS if declared(m.metrics, outs)]
    skipped = [m.name for m in MODELS if m not in models]
    notes: list[str] = []
    sections, metrics = [], {}
    for model in models:
        if not (root / model.metrics).is_file():
            notes.append(f"{model.metrics} is declared in dvc.yaml but missing: run `dvc repro`.")
            continue
        metrics[model.name] = read_metrics(root, model.metrics)
        sections.append(model_section(model, outs, raw, root, notes))
    models = [m for m in models if m.name in metrics]
    head, comparison = compare(root)
    # In path order: `dvc metrics diff` lists the files in an order that differs between runs.
    notes += [f"No earlier values of {path}: {reason}." for path, reason in sorted(comparison.missing.items())]
    if skipped:
        log.info("report: no stage in dvc.yaml produces the metrics of %s; left out", ", ".join(skipped))
    summary = summary_rows(models, metrics, comparison)
    return {
        "head": head, "comparison": comparison, "baseline": comparison.baseline,
        "baseline_commit": comparison.baseline_commit,
        "has_baseline": any(row["old_value"] is not None for row in summary),
        "summary": summary, "params_changed": params_rows(comparison),
        "sections": sections, "notes": notes, "params_text": params_text,
        "seed": raw.get("seed"), "device": raw.get("device"),
    }


def render(ctx: dict) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    return env.get_template("index.html.j2").render(**ctx)


def build(raw: dict, root: Path = Path("."), params_text: str = "") -> str:
    """The whole page as HTML text."""
    return render(context(raw, root, params_text))

