# The README's two commands: `make train` and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: help install train test test-slow lint bench clean

help:
	@echo "make train  - set up .venv and train the default experiment (experiment=smoke, W&B offline)"
	@echo "make test   - set up .venv and run the test suite (no network)"
	@echo "make test-slow / lint / bench / clean"

install: $(STAMP)

# torch is pinned exactly (pyproject) so pip takes the local CPU wheel, not a multi-GB CUDA build.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	@touch $(STAMP)

train: install
	$(PY) -m experiments.train experiment=smoke $(ARGS)

test: install
	WANDB_MODE=offline HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

test-slow: install
	WANDB_MODE=offline HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 $(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) -m experiments.bench.overhead

clean:
	rm -rf logs wandb .pytest_cache .ruff_cache
