# Snakemake entry point, kept thin: dvc.yaml is the stage graph and
# workflow/rules/dvc_stages.smk turns each of its stages into one rule.
#   snakemake --cores 2                                  # this machine
#   snakemake --workflow-profile workflow/profiles/local  # per-stage threads
#   snakemake --workflow-profile workflow/profiles/slurm  # a SLURM cluster
from snakemake.utils import validate

configfile: "params.yaml"

# What `snakemake --report report.html` says about the workflow.
report: "workflow/report/workflow.rst"

# The schema dlpipe.config checks in every stage: both engines refuse the
# same params before any job starts.
validate(config, "workflow/schemas/params.schema.yaml")

include: "workflow/rules/dvc_stages.smk"


# Nothing to run: on a cluster it stays on the submitting node.
localrules: all


rule all:
    default_target: True
    input:
        TERMINAL_OUTPUTS,
