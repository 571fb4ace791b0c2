"""Stage evaluate_transfer: both stages' best weights on the validation images,
for the chosen backbone and for the random one (the baseline).

Writes reports/metrics/transfer.json (HEADLINE: head_val_accuracy,
finetune_val_accuracy, head_gain), reports/details/transfer.json (those, the
random backbone's random_head_val_accuracy and random_finetune_val_accuracy,
finetune_gain, val_images, finetune_misclassified; a gain is the chosen
backbone's accuracy minus the random one's) and a grid of the validation
images the fine-tuned network gets wrong, as it saw them
(reports/plots/transfer/misclassified.png).
"""

from __future__ import annotations

import logging
from pathlib import Path

from dlpipe import runtime
from dlpipe.config import Params
from dlpipe.data.transfer_images import PREPARED_DIR, load_meta
from dlpipe.declare import Stage
from dlpipe.layouts import metrics_files
from dlpipe.io import write_metrics
from dlpipe.models.resnet import ResNet18
from dlpipe.pictures.image_grid import plot_image_grid
from dlpipe.stages._transfer import BACKBONES, FINETUNE_WEIGHTS, HEAD_WEIGHTS, PLOTS, backbone_path, val_loader
from dlpipe.tensor_io import load_into
from dlpipe.training.loop import predict

log = logging.getLogger(__name__)
METRICS = Path("reports/metrics/transfer.json")  # HEADLINE only; every number in DETAILS
DETAILS = Path("reports/details/transfer.json")
METRICS_FILE, DETAILS_FILE = metrics_files("evaluate_transfer", METRICS, DETAILS)
# Three short keys: `dvc metrics show` prints every model's headline on one line.
HEADLINE = ("head_val_accuracy", "finetune_val_accuracy", "head_gain")
MISCLASSIFIED_PNG = PLOTS / "misclassified.png"
MAX_SHOWN = 36


STAGE = Stage(
    params=("device", "transfer.augment.image_size", "transfer.augment.crop_fraction"),
    deps=(PREPARED_DIR,) + tuple(backbone_path(path, b) for b in BACKBONES for path in (HEAD_WEIGHTS, FINETUNE_WEIGHTS)),
    outs=(DETAILS,),
    metrics=(METRICS,),
    plots=(MISCLASSIFIED_PNG,),
    mem_mb=4000,
)


def main(params: Params) -> None:
    device = runtime.setup(0, params.device)  # nothing random here
    meta = load_meta()
    names, files = meta["class_names"], meta["files"]["val"]
    loader = val_loader(params, device)
    accuracy, predicted = {}, {}
    for backbone in reversed(BACKBONES):  # the pretrained run last: its predictions make the grid
        for stage, weights in (("head", HEAD_WEIGHTS), ("finetune", FINETUNE_WEIGHTS)):
            model = ResNet18(len(names)).to(device)  # every weight comes from the file
            load_into(model, backbone_path(weights, backbone))
            outputs, targets = predict(model, loader)
            predicted[stage] = outputs.argmax(dim=1)
            accuracy[backbone, stage] = (predicted[stage] == targets).float().mean().item()
    predicted = predicted["finetune"]
    wrong = (predicted != targets).nonzero().flatten().tolist()  # the fine-tuned network's mistakes
    metrics = {
        "head_val_accuracy": accuracy["pretrained", "head"], "finetune_val_accuracy": accuracy["pretrained", "finetune"],
        "head_gain": accuracy["pretrained", "head"] - accuracy["random", "head"],
        "random_head_val_accuracy": accuracy["random", "head"],
        "random_finetune_val_accuracy": accuracy["random", "finetune"],
        "finetune_gain": accuracy["pretrained", "finetune"] - accuracy["random", "finetune"],
        "val_images": len(targets), "finetune_misclassified": len(wrong),
    }
    shown = wrong[:MAX_SHOWN]
    captions = [f"{Path(files[i]).name}\n{names[targets[i]]} -> {names[predicted[i]]}" for i in shown]
    plot_image_grid(loader.inputs[shown], captions, MISCLASSIFIED_PNG,
                    f"ResNet18 fine-tuned on {meta['dataset']}: {len(wrong)} of {len(targets)} validation "
                    f"images misclassified" + (f" (first {MAX_SHOWN})" if len(wrong) > MAX_SHOWN else ""),
                    empty_note="no validation image misclassified")
    write_metrics(METRICS_FILE, DETAILS_FILE, metrics, HEADLINE)
    log.info("transfer on %s: head_val_accuracy %.4f, finetune_val_accuracy %.4f; random backbone %.4f, %.4f "
             "(%d images)", meta["dataset"], metrics["head_val_accuracy"], metrics["finetune_val_accuracy"],
             metrics["random_head_val_accuracy"], metrics["random_finetune_val_accuracy"], len(targets))
