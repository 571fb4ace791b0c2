# The two commands of the README:
#   make run    set up .venv (pinned requirements) and run the whole pipeline (dvc repro)
#   make test   set up .venv and run the test suite
# Other targets: make test-slow (the long end-to-end tests), make snakemake, make clean.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Stages call `python -m dlpipe ...`; the venv must come first on PATH for both engines.
export PATH := $(CURDIR)/$(BIN):$(PATH)
# OpenMP's busy-wait slows torch ~10x when another process holds a core.
export OMP_WAIT_POLICY := PASSIVE
PYTEST_ARGS ?=

.PHONY: setup run test test-slow snakemake clean

setup: $(STAMP)

$(STAMP): requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

run: setup
	$(BIN)/dvc repro
	$(BIN)/dvc metrics show

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: nothing was checked" >&2; fi; exit $$rc

test-slow: setup
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

snakemake: setup
	$(BIN)/snakemake --cores 2 --workflow-profile workflow/profiles/local

clean:
	rm -rf $(VENV) .snakemake logs
