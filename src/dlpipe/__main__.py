"""``python -m dlpipe <stage> [--params params.yaml]``: run one pipeline stage.

dvc.yaml and the Snakemake rules call exactly this command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import re
import sys

# OpenMP's busy-wait makes torch ~10x slower when another process holds the
# other core; it must be set before torch loads the OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def available_stages() -> list[str]:
    import dlpipe.stages

    return sorted(m.name for m in pkgutil.iter_modules(dlpipe.stages.__path__) if not m.name.startswith("_"))


def one_line(message: str) -> str:
    """The CLI prints one line: a library's multi-line text quoted in a message
    (torch's refusal of a pickle, say) is joined, its terminal colour codes dropped."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", message).split())


def main(argv: list[str] | None = None) -> int:
    from dlpipe.config import load_params
    from dlpipe.errors import PipelineError
    from dlpipe.runtime import pin_threads
    from dlpipe.workflow_graph import check_thread_keys, stage_threads

    stages = available_stages()
    parser = argparse.ArgumentParser(prog="python -m dlpipe", description=__doc__)
    parser.add_argument("stage", choices=stages, metavar="stage", help="one of: " + ", ".join(stages))
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        params = load_params(args.params)
        check_thread_keys(params.raw, stages, args.params)
        threads = stage_threads(params.raw, args.stage, args.params)
        pin_threads(args.stage, threads)
        module = importlib.import_module(f"dlpipe.stages.{args.stage}")
        module.main(params)
    except PipelineError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
