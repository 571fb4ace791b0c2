# The two commands of the README:
#   make run    set up .venv (pinned requirements) and run the whole pipeline (dvc repro)
#   make test   set up .venv and run the test suite
# Other targets: make test-slow (the long end-to-end tests), make snakemake, make clean,
# make snakemake-touch (after dvc pull / dvc checkout: Snakemake takes DVC's outputs as they are).
# make bench: the performance figures against the references (python -m benchmarks, from the
# top-level benchmarks/ folder, not part of the dlpipe package: reports/bench.json and a table;
# pipeline, overhead and flops alone took 42 minutes on a 2-core Intel Xeon; BENCH_ARGS=--quick for a check).
# make seeds: the headline metrics of the default params over seeds 42, 1, 2, 3 (every split seed
# too), each a clean-state dvc repro, two at once (python -m benchmarks.seeds: reports/seeds.json).
# make setup also writes build/plots_template.html (git-ignored), the page that `dvc plots show` and
# `dvc plots diff` fill (.dvc/config: plots.html_template): Vega, Vega-Lite and Vega-Embed inline
# from the pinned django-js-lib-vega-embed, so the charts draw with no network.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PLOTS_TEMPLATE := build/plots_template.html
# Stages call `python -m dlpipe ...`; the venv must come first on PATH for both engines.
export PATH := $(CURDIR)/$(BIN):$(PATH)
# OpenMP's busy-wait slows torch ~10x when another process holds a core.
export OMP_WAIT_POLICY := PASSIVE
PYTEST_ARGS ?=
# One pytest-xdist worker per core, each test module on one worker (its module fixtures start
# once; each worker makes its own shared tiny pipeline run). PYTEST_PARALLEL= runs one process.
PYTEST_PARALLEL ?= -n auto --dist loadfile
BENCH_ARGS ?=
SEEDS_ARGS ?=

.PHONY: setup run test test-slow snakemake snakemake-touch bench seeds generate clean

setup: $(STAMP) $(PLOTS_TEMPLATE)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# Written where .dvc/config's plots.html_template points (python -m dlpipe.plots_template reads it).
$(PLOTS_TEMPLATE): $(STAMP) src/dlpipe/plots_template.py
	$(BIN)/python -m dlpipe.plots_template

run: setup
	$(BIN)/dvc repro
	$(BIN)/dvc metrics show

test: setup
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: nothing was checked" >&2; fi; exit $$rc

test-slow: setup
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

snakemake: setup
	$(BIN)/snakemake --cores 2 --workflow-profile workflow/profiles/local

# DVC restores contents, not modification times, and a fresh clone has no
# Snakemake records (.snakemake/metadata): a plain `snakemake` would rerun
# stages after `dvc pull` or `dvc checkout`. Once the workspace is what dvc.lock
# records (dvc status --quiet: exit 0), touch every output in graph order and
# record each job's params, inputs and code as if it had just run; then a
# changed param reruns its stage and what follows, and nothing else reruns.
snakemake-touch: setup
	@$(BIN)/dvc status --quiet || { echo "snakemake-touch: dvc status is not clean; run dvc checkout (or dvc repro) first" >&2; exit 1; }
	$(BIN)/snakemake --cores 1 --touch --forceall

# Separate from the tests: timings, not pass/fail. Reads the prepared data (dvc repro first)
# and runs the whole pipeline once more in a clean temporary copy.
bench: setup
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

seeds: setup
	$(BIN)/python -m benchmarks.seeds $(SEEDS_ARGS)

# dvc.yaml is generated from the STAGE declaration in each stage module (dlpipe.declare):
# run this after adding a stage or changing a declaration or an import.
generate: setup
	$(BIN)/python -m dlpipe.declare

clean:
	rm -rf $(VENV) .snakemake logs $(PLOTS_TEMPLATE)
