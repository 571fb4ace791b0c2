"""``python -m dlpipe <stage> [--params params.yaml]``: run one pipeline stage.

dvc.yaml and the Snakemake rules call exactly this command. ``python -m dlpipe
--list`` lists the stages with what each does; ``python -m dlpipe <stage>
--help`` says what the stage reads (params keys, files) and writes.
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


LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

def available_stages() -> list[str]:
    import dlpipe.stages

    return sorted(m.name for m in pkgutil.iter_modules(dlpipe.stages.__path__) if not m.name.startswith("_"))


def one_line(message: str) -> str:
    """The CLI prints one line: a library's multi-line text quoted in a message
    (torch's refusal of a pickle, say) is joined, its terminal colour codes dropped."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", message).split())


def stage_list() -> str:
    """One line per stage: its name and the first sentence of its docstring."""
    from dlpipe.declare import description

    stages = available_stages()
    width = max(map(len, stages))
    return "\n".join(f"{name:<{width}}  {description(name)}" for name in stages)


def stage_help(stage: str) -> str:
    """What ``stage`` reads and writes, from its STAGE declaration."""
    from dlpipe.declare import Stage, description

    spec: Stage = importlib.import_module(f"dlpipe.stages.{stage}").STAGE
    items = lambda entries: [str(e[0] if isinstance(e, tuple) else e) for e in entries]  # noqa: E731
    params = ["all of params.yaml"] if spec.whole_params_file else [f"threads.{stage}", *spec.params]
    writes = items(spec.outs) + items(spec.metrics) + items(spec.plots) + [str(k) for k in spec.plot_groups
                                                                          if "/" in str(k)]
    lines = [f"python -m dlpipe {stage} [--params FILE]: {description(stage)}.", "",
             "params:  " + ", ".join(params),
             "reads:   " + (", ".join(items(spec.deps)) or "-"),
             "writes:  " + ", ".join(dict.fromkeys(writes))]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from dlpipe.config import load_params
    from dlpipe.errors import PipelineError
    from dlpipe.io import sigterm_unwinds
    from dlpipe.runtime import pin_threads
    from dlpipe.workflow_graph import check_thread_keys, stage_threads

    stages = available_stages()
    argv = sys.argv[1:] if argv is None else argv
    if "--list" in argv:
        print(stage_list())
        return 0
    if {"-h", "--help"} & set(argv) and set(argv) & set(stages):
        print(stage_help(next(a for a in argv if a in stages)))
        return 0
    parser = argparse.ArgumentParser(prog="python -m dlpipe", description=__doc__)
    parser.add_argument("stage", choices=stages, metavar="stage", help="one of: " + ", ".join(stages))
    parser.add_argument("--params", default="params.yaml", help="params file, any path (default: %(default)s)")
    parser.add_argument("--list", action="store_true", help="list the stages with what each does")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        # A stage that is sent SIGTERM unwinds (exit status 143 as before): its partial
        # downloads and temporary folders are removed on the way out.
        with sigterm_unwinds():
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
