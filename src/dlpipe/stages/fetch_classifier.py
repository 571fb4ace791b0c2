"""Stage fetch_classifier: digits (embedded) or CIFAR-10 (downloaded, md5-checked)
into data/raw/classifier/."""

from __future__ import annotations

import logging

from dlpipe.config import Params
from dlpipe.data.classifier_fetch import RAW_DIR, fetch
from dlpipe.declare import Stage

log = logging.getLogger(__name__)


STAGE = Stage(
    params=("lenet.data", "downloads"), outs=(RAW_DIR,), runtime=30,
)


def main(params: Params) -> None:
    fetch(params.lenet.data, RAW_DIR, params.downloads)
    log.info("fetched %s into %s", params.lenet.data.name, RAW_DIR)
