# One rule per dvc.yaml stage. Input = deps, output = outs + metrics + plots
# (persisted outs left out), params = the stage's params.yaml values, so that a
# changed value, like a changed command, reruns the rule as `dvc repro` would.
from dlpipe.workflow_graph import (check_thread_keys, clamp_future_mtimes, in_report, is_directory,
                                   job_params_file, load_stages, produced_by, report_category, resolve_params,
                                   rule_inputs, stage_threads)
from dlpipe.gpu_slots import rule_gpu_need
from snakemake.logging import logger
import os

# GPUs on this machine: every job runs its command through dlpipe.gpu_slots,
# which gives a job needing gpu=N (the profile's set-resources) N devices no
# other running job holds, and a job needing none no device. How many GPU jobs
# run at once is Snakemake's business: --resources gpu=K. Mapping is for the
# local executor only: a cluster's scheduler hands each job its own GPUs. The
# executor is known only once the run starts (not while this file is read),
# hence the onstart handler; it runs in the main process only (never in a
# cluster job, and not with --no-hooks), before the first job starts.
# (snakemake --lint asks for an envvars directive: this variable is set here,
# never by the user, so there is nothing to assert.)
onstart:
    if workflow.local_exec:
        os.environ["DLPIPE_GPU_LOCKS"] = os.path.abspath(".snakemake/gpu_slots")

# dvc.yaml sits beside the Snakefile; job paths are relative to the working
# directory, which is the repository root when run as documented.
STAGES = load_stages(os.path.join(workflow.basedir, "dvc.yaml"))
check_thread_keys(config, [stage.name for stage in STAGES])
PRODUCED = produced_by(STAGES)
CONSUMED = {dep for stage in STAGES for dep in stage.deps}
# Snakemake's config (params.yaml, plus --config / --configfile) is what every job runs
# with: when it differs from params.yaml, the stages read it from a file of its own.
JOB_PARAMS = job_params_file(config)
PARAMS_ARG = f" --params {JOB_PARAMS}" if JOB_PARAMS else ""
# rule all asks for what no stage consumes: the ends of the graph.
TERMINAL_OUTPUTS = [out for out in PRODUCED if out not in CONSUMED]
INPUTS = {stage.name: rule_inputs(stage, PRODUCED) for stage in STAGES}
# Inputs dated in the future (clock skew) would make Snakemake delete the outputs of
# every job that reads them: they are brought back to now before any job runs.
_FUTURE = clamp_future_mtimes(sorted({path for paths in INPUTS.values() for path in paths}))
if _FUTURE:
    logger.warning(f"{len(_FUTURE)} input(s) dated in the future (clock skew) set to now, first "
                   f"{_FUTURE[0]}: the contents are unchanged")


# (snakemake --lint asks each rule for a conda environment or a container: the
# stages run in the pinned virtual environment `make setup` builds, whose
# `python` must come first on PATH, locally and on a cluster: docs/cluster.md.)
for _stage in STAGES:

    rule:
        name:
            _stage.name
        input:
            INPUTS[_stage.name],
        output:
            # `snakemake --report`: metrics and pictures by model, each captioned with its stage's desc
            [directory(out) if is_directory(out)
             else report(out, caption="../report/output.rst", category=report_category(_stage)) if in_report(out)
             else out for out in _stage.outs],
        params:
            # The command lives in params: the loop variable must be captured
            # now, and the shell string is formatted only when the job runs.
            cmd=_stage.cmd + PARAMS_ARG,
            desc=_stage.desc,  # for the report's captions
            # Identifiers cannot hold dots; the value keeps the dotted key so
            # Snakemake's record (values only) still tells keys apart.
            **{
                key.replace(".", "__"): f"{key}={value}"
                for key, value in resolve_params(_stage.params, config).items()
            },
        log:
            f"logs/{_stage.name}.log",
        # params.yaml threads.<stage>: the count the stage itself pins torch to
        # (dlpipe.runtime.pin_threads), so Snakemake reserves exactly those cores.
        # --cores or a profile's set-threads may grant fewer or more; the stage
        # keeps its declared count (its results must not depend on the engine).
        threads: stage_threads(config, _stage.name)
        # dvc.yaml's meta.resources, from each stage's declaration (dlpipe.declare):
        # memory (MB), runtime (minutes, for a cluster) and gpu: 1 for every stage
        # that reads `device`, counted when the job is scheduled (dlpipe.gpu_slots.rule_gpu_need:
        # 0 on a machine without a GPU, so the profile's gpu cap does not serialize stages
        # that all run on the CPU). A profile's set-resources can still override them.
        resources:
            gpu=rule_gpu_need(_stage.resources.get("gpu", 0), workflow),
            mem_mb=_stage.resources.get("mem_mb", 2000),
            runtime=_stage.resources.get("runtime", 15),
        shell:
            "python -m dlpipe.gpu_slots {resources.gpu} {params.cmd:q} > {log} 2>&1"
