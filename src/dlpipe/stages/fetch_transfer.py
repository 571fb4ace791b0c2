"""Stage fetch_transfer: the LFW faces (embedded, written as PNGs), the
hymenoptera zip (downloaded, md5-checked, safely extracted) or your own folder
(checked, copied, split when it has no train/ and val/) as an ImageFolder with
train/ and val/ in data/raw/transfer/."""

from __future__ import annotations

import logging

from dlpipe.config import Params
from dlpipe.data.transfer_fetch import RAW_DIR, fetch
from dlpipe.declare import Stage

log = logging.getLogger(__name__)


STAGE = Stage(
    params=("transfer.data", "downloads"), outs=(RAW_DIR,), runtime=30,
)


def main(params: Params) -> None:
    fetch(params.transfer.data, RAW_DIR, params.downloads)
    log.info("fetched %s into %s", params.transfer.data.name, RAW_DIR)
