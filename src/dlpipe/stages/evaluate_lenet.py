"""Stage evaluate_lenet: the best LeNet weights on the test split.

Writes reports/metrics/lenet.json (the headline numbers: test_accuracy,
val_accuracy; with test_images in reports/details/lenet.json), each class's test accuracy as a DVC bar plot
(reports/plots/lenet/class_accuracy.csv: per-class detail stays out of the
metrics, so `dvc metrics show` fits a terminal), the confusion matrix as
records for DVC's confusion template (reports/plots/lenet/confusion.json) and
as a picture (.png).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch

from dlpipe import runtime
from dlpipe.config import Params
from dlpipe.data.classifier_prepared import PREPARED_DIR, load_meta
from dlpipe.declare import Stage
from dlpipe.layouts import TEXT, JsonFile, array, metrics_files, record
from dlpipe.io import write_metrics, write_text
from dlpipe.metrics.confusion import confusion_matrix
from dlpipe.pictures.confusion import plot_confusion
from dlpipe.stages._lenet import WEIGHTS, build_model, eval_loader
from dlpipe.tensor_io import load_into
from dlpipe.training.loop import predict

log = logging.getLogger(__name__)
METRICS = Path("reports/metrics/lenet.json")  # HEADLINE only; every number in DETAILS
DETAILS = Path("reports/details/lenet.json")
METRICS_FILE, DETAILS_FILE = metrics_files("evaluate_lenet", METRICS, DETAILS)
HEADLINE = ("test_accuracy", "val_accuracy")
CONFUSION_JSON = Path("reports/plots/lenet/confusion.json")
CONFUSION_PNG = Path("reports/plots/lenet/confusion.png")
CONFUSION_FILE = JsonFile("evaluate_lenet", CONFUSION_JSON.as_posix(), array(record({"actual": TEXT, "predicted": TEXT})))
CLASS_ACCURACY = Path("reports/plots/lenet/class_accuracy.csv")


STAGE = Stage(
    params=("device", "lenet.model"),
    deps=(WEIGHTS, PREPARED_DIR),
    outs=(DETAILS,),
    metrics=(METRICS,),
    plots=((CONFUSION_JSON, {"template": "confusion", "x": "actual", "y": "predicted"}), CONFUSION_PNG,
           (CLASS_ACCURACY, {"template": "bar_horizontal", "x": "accuracy", "y": "class"})),
)


def class_accuracy(matrix: torch.Tensor, names: list[str]) -> pd.DataFrame:
    """Each class's share of its test images classified right (classes with no test image left out)."""
    totals = matrix.sum(dim=1)
    return pd.DataFrame([{"class": name, "accuracy": float(matrix[i, i] / totals[i]), "images": int(totals[i])}
                         for i, name in enumerate(names) if totals[i] > 0])


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return (outputs.argmax(dim=1) == targets).float().mean().item()


def main(params: Params) -> None:
    device = runtime.setup(0, params.device)  # nothing random here
    meta = load_meta()
    names = meta["class_names"]
    model = build_model(params.lenet, params.seed, len(names), device, seeded=False)
    load_into(model, WEIGHTS)

    outputs, actual = predict(model, eval_loader("test", meta, device))
    predicted = outputs.argmax(dim=1)
    matrix = confusion_matrix(actual, predicted, len(names))
    val_outputs, val_targets = predict(model, eval_loader("val", meta, device))
    metrics = {
        "test_accuracy": accuracy(outputs, actual),
        "val_accuracy": accuracy(val_outputs, val_targets),
        "test_images": len(actual),
    }
    actual_names = [names[i] for i in actual.tolist()]
    predicted_names = [names[i] for i in predicted.tolist()]
    CONFUSION_FILE.write(CONFUSION_JSON, [{"actual": a, "predicted": p} for a, p in zip(actual_names, predicted_names)])
    plot_confusion(matrix, names, CONFUSION_PNG,
                   f"LeNet on {meta['dataset']} test: accuracy {metrics['test_accuracy']:.4f}")
    write_text(CLASS_ACCURACY, class_accuracy(matrix, names).to_csv(index=False))
    write_metrics(METRICS_FILE, DETAILS_FILE, metrics, HEADLINE)
    log.info("lenet on %s: test_accuracy %.4f (%d images), val_accuracy %.4f", meta["dataset"],
             metrics["test_accuracy"], len(actual), metrics["val_accuracy"])
