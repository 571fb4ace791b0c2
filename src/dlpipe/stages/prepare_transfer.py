"""Stage prepare_transfer: decode the ImageFolder in data/raw/transfer once into
uint8 tensors (data/prepared/transfer/): every later stage crops and flips
these in memory instead of reopening image files each epoch."""

from __future__ import annotations

import json
import logging

from dlpipe.config import Params
from dlpipe.data.transfer_fetch import RAW_DIR, SOURCE_JSON, SPLITS
from dlpipe.data.transfer_images import META_JSON, PREPARED_DIR, read_split, save_split
from dlpipe.declare import Stage
from dlpipe.errors import PipelineError
from dlpipe.io import atomic_dir, write_json

log = logging.getLogger(__name__)


STAGE = Stage(
    params=("transfer.prepare",), deps=(RAW_DIR,), outs=(PREPARED_DIR,), mem_mb=4000,
)


def read_source() -> dict:
    path = RAW_DIR / SOURCE_JSON
    try:
        source = json.loads(path.read_text())
        source["name"]  # noqa: B018 (presence check)
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run fetch_transfer first") from None
    except (ValueError, KeyError, TypeError):
        raise PipelineError(f"{path}: not the record fetch_transfer writes; rerun fetch_transfer") from None
    return source


def main(params: Params) -> None:
    source = read_source()
    splits = {name: read_split(RAW_DIR / name, params.transfer.prepare.max_side) for name in SPLITS}
    classes = splits["train"]["class_names"]
    if splits["val"]["class_names"] != classes:
        raise PipelineError(f"{RAW_DIR}: val/ has classes {splits['val']['class_names']}, train/ has {classes}; "
                            "both need the same class folders")
    meta = {
        "dataset": source["name"], "class_names": classes,
        "sizes": {name: len(split["labels"]) for name, split in splits.items()},
        "class_counts": {name: split["labels"].bincount(minlength=len(classes)).tolist()
                         for name, split in splits.items()},
        "canvas": {name: list(split["images"].shape[2:]) for name, split in splits.items()},
        "files": {name: split["files"] for name, split in splits.items()},
    }
    with atomic_dir(PREPARED_DIR) as staging:
        for name, split in splits.items():
            save_split(staging, name, split)
        write_json(staging / META_JSON, meta)
    log.info("prepared %s: %s images per split, classes %s", source["name"], meta["sizes"], classes)
