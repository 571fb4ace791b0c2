"""Stage fetch_houses: the Kaggle House Prices CSVs into data/raw/houses/, sha256-checked."""

from __future__ import annotations

import logging

from dlpipe.config import Params
from dlpipe.data.houses_fetch import fetch
from dlpipe.data.houses_prepared import RAW_DIR
from dlpipe.declare import Stage

log = logging.getLogger(__name__)


STAGE = Stage(
    params=("houses.data", "downloads"), outs=(RAW_DIR,),
)


def main(params: Params) -> None:
    fetch(params.houses.data, RAW_DIR, params.downloads)
    log.info("fetched train.csv and test.csv (source %s) into %s", params.houses.data.source, RAW_DIR)
