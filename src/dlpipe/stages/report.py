"""Stage report: reports/index.html, one self-contained page with every model's
metrics (beside their values at the previous commit, through ``dvc metrics
diff``), LR range tests, training curves and pictures, the params and the commit.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dlpipe.config import Params
from dlpipe.declare import Stage
from dlpipe.io import write_text
from dlpipe.report import page
from dlpipe.report.registry import MODELS

log = logging.getLogger(__name__)
INDEX = Path("reports/index.html")


STAGE = Stage(
    # every model's results the page shows (dlpipe.report.registry), and all of params.yaml
    deps=(*(path for model in MODELS for path in model.files()),
          Path("src/dlpipe/report/templates")),  # the page's template: code that no import names
    outs=(INDEX,),
    whole_params_file=True,
)


def main(params: Params) -> None:
    source = Path(params.source)  # params.yaml, or the config a Snakemake run was given
    params_text = source.read_text() if source.is_file() else ""
    html = page.build(params.raw, Path("."), params_text)
    write_text(INDEX, html)
    log.info("report: %s (%.0f KiB)", INDEX, len(html.encode()) / 1024)
