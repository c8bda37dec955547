# lightning-sparse-mtl: `make train` (the quickstart: sparse training, pruning, exports, speed report) and `make test`
# (the suite) work on a fresh clone; `make docs` builds the documentation site.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
TORCH_SPEC ?= 'torch>=2.3' 'torchvision>=0.18'
PYTEST_ARGS ?=
# `make train` runs this preset (conf/experiment/); ARGS with its own experiment=... replaces it, EXPERIMENT= drops it
EXPERIMENT ?= quickstart
TRAIN_PRESET = $(if $(findstring experiment=,$(ARGS)),,$(if $(EXPERIMENT),experiment=$(EXPERIMENT)))

.PHONY: help install train test test-slow docs lint format bench wheel clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e '.[dev,docs]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package with the dev and docs extras

train: $(STAMP)  ## quickstart: sparse train + test + prune + exports + speed (dense: ARGS="sparsity.target_macs=null")
	$(PY) -m lightning_sparse_mtl.train $(TRAIN_PRESET) $(ARGS)

test: $(STAMP)  ## the default test suite (slow tests excluded)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: $(STAMP)  ## the slow tests only
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

docs: $(STAMP)  ## build the documentation site into site/ (mkdocs, warnings are errors)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

lint: $(STAMP)  ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)  ## ruff fix + format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

wheel: $(STAMP)  ## build dist/lightning_sparse_mtl-*.whl (the configs inside)
	$(PIP) wheel -q --no-deps -w dist .

clean:  ## remove outputs, caches and build outputs (not the venv)
	rm -rf outputs multirun .pytest_cache .ruff_cache build dist site *.egg-info
