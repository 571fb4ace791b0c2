"""Stage prepare_classifier: the raw data in CIFAR layout (uint8 N x 3 x 32 x 32,
int64 labels), split stratified and deterministically, with the training
split's per-channel mean and std, into data/prepared/classifier/."""

from __future__ import annotations

import json
import logging

import numpy as np
import torch

from dlpipe.config import ClassifierPrepare, Params
from dlpipe.data import classifier_convert as cc
from dlpipe.data.classifier_fetch import CIFAR_DIR, DIGITS_FILE, RAW_DIR, SOURCE_JSON
from dlpipe.data.classifier_prepared import META_JSON, PREPARED_DIR, save_split
from dlpipe.declare import Stage
from dlpipe.errors import PipelineError
from dlpipe.io import atomic_dir, write_json

log = logging.getLogger(__name__)


STAGE = Stage(
    params=("lenet.prepare",), deps=(RAW_DIR,), outs=(PREPARED_DIR,),
)


def read_source() -> dict:
    path = RAW_DIR / SOURCE_JSON
    try:
        source = json.loads(path.read_text())
        if source["name"] not in ("digits", "cifar10"):
            raise ValueError(source["name"])
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run fetch_classifier first") from None
    except (ValueError, KeyError, TypeError):
        raise PipelineError(f"{path}: not the record fetch_classifier writes; rerun fetch_classifier") from None
    return source


def load_digits_raw() -> tuple[torch.Tensor, torch.Tensor]:
    path = RAW_DIR / DIGITS_FILE
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        images, labels = raw["images"], raw["labels"]
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run fetch_classifier first") from None
    except Exception as exc:
        raise PipelineError(f"{path}: unreadable ({type(exc).__name__}); rerun fetch_classifier") from None
    return images, labels


def split(name: str, raw: dict, cfg: ClassifierPrepare) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Pure: {"train"|"val"|"test": (images, labels)} from the raw images of ``name``."""
    if name == "digits":
        images, labels = raw["images"], raw["labels"]
        index = cc.stratified_split(labels.numpy(), {"test": cfg.test_fraction, "val": cfg.val_fraction},
                                    cfg.split_seed)
        return {s: (images[torch.from_numpy(index[s])], labels[torch.from_numpy(index[s])])
                for s in ("train", "val", "test")}
    train_images, train_labels = raw["train"]
    index = cc.stratified_split(train_labels.numpy(), {"val": cfg.val_fraction}, cfg.split_seed)
    out = {s: (train_images[torch.from_numpy(index[s])], train_labels[torch.from_numpy(index[s])])
           for s in ("train", "val")}
    out["test"] = raw["test"]
    return out


def main(params: Params) -> None:
    cfg = params.lenet.prepare
    source = read_source()
    name = source["name"]
    if name == "digits":
        images8, labels = load_digits_raw()
        class_names = [str(c) for c in source.get("class_names", range(10))]
        raw = {"images": cc.digits_to_cifar_layout(images8), "labels": labels}
    else:
        raw = cc.load_cifar10(RAW_DIR / CIFAR_DIR)
        class_names = raw["class_names"]
    splits = split(name, raw, cfg)
    mean, std = cc.channel_stats(splits["train"][0])
    meta = {
        "dataset": name, "class_names": class_names, "mean": mean, "std": std,
        "stats_from": "train", "image_shape": [3, cc.SIZE, cc.SIZE],
        "sizes": {s: len(labels) for s, (_, labels) in splits.items()},
        "class_counts": {s: np.bincount(labels.numpy(), minlength=len(class_names)).tolist()
                         for s, (_, labels) in splits.items()},
    }
    with atomic_dir(PREPARED_DIR) as staging:
        for s, (images, labels) in splits.items():
            save_split(staging, s, images, labels)
        write_json(staging / META_JSON, meta)
    log.info("prepared %s: %s; train mean %s std %s", name, meta["sizes"],
             [round(m, 4) for m in mean], [round(s, 4) for s in std])
