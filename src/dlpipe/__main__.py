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


def interrupted() -> str:
    """The line Ctrl-C ends a stage with: the checkpoint a rerun resumes from, if any."""
    checkpoint = sys.modules.get("dlpipe.training.checkpoint")  # loaded by the training stages only
    kept = checkpoint.last_kept() if checkpoint else None
    if kept is None:
        return "interrupted: nothing to resume; rerun to start again"
    path, epoch = kept
    return f"interrupted: the last checkpoint (epoch {epoch}, {path}) is kept; rerun to resume"


def main(argv: list[str] | None = None) -> int:
    """Run a stage. Bad input (PipelineError) and a file the system refused (an OSError:
    a full disk, a read-only folder) end with one ``error:`` line and exit status 2, Ctrl-C
    with one ``interrupted:`` line and 130 (128 + SIGINT, as a shell reports it); never a
    traceback. A SIGINT the parent ignores (a background job of a script) stays ignored."""
    from dlpipe.errors import PipelineError, os_error_line

    try:
        return run(argv)
    except PipelineError as exc:
        message = str(exc)
    except BrokenPipeError:  # stdout closed early (`--list | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush fails silently
        return 1
    except OSError as exc:
        if exc.errno is None:  # not the system's refusal: a library's own error, left as it is
            raise
        message = os_error_line(exc.filename, exc.errno)
    except KeyboardInterrupt:
        print(interrupted(), file=sys.stderr)
        return 130
    print(f"error: {one_line(message)}", file=sys.stderr)
    return 2


def run(argv: list[str] | None) -> int:
    """``main`` without the error handling: list, help, or run one stage."""
    from dlpipe.config import load_params
    from dlpipe.io import outputs_together
    from dlpipe.signals import sigterm_unwinds
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
    # A stage that is sent SIGTERM unwinds (exit status 143 as before): its partial
    # downloads and temporary folders are removed on the way out. Its outputs are
    # replaced together when it succeeds, none of them when it fails or is stopped.
    with sigterm_unwinds(), outputs_together():
        params = load_params(args.params)
        check_thread_keys(params.raw, stages, args.params)
        threads = stage_threads(params.raw, args.stage, args.params)
        pin_threads(args.stage, threads)
        module = importlib.import_module(f"dlpipe.stages.{args.stage}")
        module.main(params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
