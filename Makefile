# The README's two commands: `make train` and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=
PYTEST_ARGS ?=

.PHONY: help install train test test-slow test-cluster lint check reliability bench clean

help:
	@echo "make train  - set up .venv and train the default experiment (experiment=smoke, W&B offline)"
	@echo "make test   - set up .venv and run the test suite (no network)"
	@echo "make check  - layer contracts (import-linter), ruff, repeated code (pylint duplicate-code)"
	@echo "make reliability - fuzz corpus summary and kill-test figures"
	@echo "make test-cluster - real Slurm jobs on a local single-node cluster (root)"
	@echo "make test-slow / lint / bench / clean"

install: $(STAMP)

# torch is pinned exactly (pyproject) so pip takes the local CPU wheel, not a multi-GB CUDA build.
# The hf extra (transformers) is installed too so the Hugging Face tests run; tb (tensorboard)
# so the TensorBoard logger tests run.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[dev,hf,tb]'
	@touch $(STAMP)

train: install
	$(PY) -m experiments.train experiment=smoke resume=auto $(ARGS)

test: install
	WANDB_MODE=offline HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

test-slow: install
	WANDB_MODE=offline HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 $(PY) -m pytest -m slow $(PYTEST_ARGS)

# Real Slurm jobs (tests/cluster/): starts the local single-node cluster first (root; installs
# slurm-wlm and munge when missing). See docs/cluster.md.
test-cluster: install
	scripts/local_slurm.sh start
	WANDB_MODE=offline HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 $(PY) -m pytest -m cluster tests/cluster $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .

# What CI runs after the tests (.ci/run): layer contracts, lint, repeated code.
check: install
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pylint --disable=all --enable=duplicate-code --min-similarity-lines=6 \
		--ignore=tests --score=n lhp datamodules lit_models callbacks analysis experiments

# The reliability figures: fuzz-corpus summary, then the kill-test figures (docs/reliability.md).
reliability: install
	WANDB_MODE=offline HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 $(PY) -m tests.reliability

bench: install
	$(PY) -m experiments.bench.overhead

clean:
	rm -rf logs wandb .pytest_cache .ruff_cache
