# One-command set-up: `make demo` and `make test` create .venv and install everything.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a machine with a CUDA wheel of choice, override TORCH_SPEC.
TORCH_SPEC ?= torch==2.13.0
# Real data sets live beside the checkout when present; override on the command line.
ifneq ($(wildcard ../shared/data),)
PYRO_PRUNE_DATA ?= $(abspath ../shared/data)
endif
export PYRO_PRUNE_DATA
export MPLBACKEND ?= Agg
# Two threads keep timings comparable on small machines; override as needed.
export OMP_NUM_THREADS ?= 2

.PHONY: install install-dev demo test test-fast docs bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e ".[fast,laplace]"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install "$(TORCH_SPEC)" -e ".[dev,fast,laplace,docs]"
	touch $@

$(VENV)/.installed-docs: $(VENV)/.installed
	$(BIN)/python -m pip install "$(TORCH_SPEC)" -e ".[docs,fast]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/pyro-prune demo

test: install-dev
	$(BIN)/python -m pytest -q

test-fast: install-dev
	$(BIN)/python -m pytest -q -m "not slow"

# The documentation site with every tutorial executed (site/; 240 s with OMP_NUM_THREADS=1 on a
# shared 2-core machine; two threads per process on busy cores can be many times slower). The tests build
# the same pages strictly without executing the tutorials (tests/test_docs.py).
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 PYRO_PRUNE_PROGRESS=off $(BIN)/mkdocs build --strict

bench: install-dev
	$(BIN)/python -m pip install "$(TORCH_SPEC)" -e ".[bench]"
	$(BIN)/python benchmarks/run_all.py

lint: install-dev
	$(BIN)/ruff check pyro_prune tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache
