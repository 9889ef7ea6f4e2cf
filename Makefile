# Two commands for a newcomer: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/default.yaml
export DAGSTER_HOME := $(CURDIR)/.dagster_home

.PHONY: demo test test-slow lint format install ui bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 is pinned in pyproject.toml: a CPU wheel is installed, never a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	@mkdir -p $(DAGSTER_HOME)
	$(BIN)/bmlt validate --config $(CONFIG)
	BMLT_CONFIG=$(CONFIG) $(BIN)/dagster job execute -m bmlt_assets.definitions -j full_pipeline \
		--tags "$$($(BIN)/bmlt range-tags --config $(CONFIG))"
	@$(BIN)/bmlt summary --config $(CONFIG)

# The quick suite (about 8 minutes on 2 cores); `make test-slow` runs the end-to-end tests marked
# slow (CLI backfills, services); CI runs both. Each first installs the Debian packages its tests
# need when missing (.ci/system-packages: Chromium; PostgreSQL for the slow ones), or says in one
# line what to run when it cannot (not root).
test: install
	@.ci/system-packages
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: install
	@.ci/system-packages --slow
	$(BIN)/python -m pytest -q -m slow

# ruff (lint + format check, one line length) everywhere; mypy on both packages; the import layers.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-logo

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Ratios against references measured in the same run; figures go to benchmarks/results.json.
# The book engine at real size writes its tiled days (about 7 GB) into $$BMLT_BENCH_DATA or .bench-data/.
bench: install
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.ingest
	$(BIN)/python -m benchmarks.book_engine --reference-lengths 1h --materialize
	$(BIN)/python -m benchmarks.landing_day

bench-quick: install
	$(BIN)/python -m benchmarks.run --quick --out benchmarks/results-quick.json

# Every shipped config side by side (workspace.yaml); CONFIG, when it is none of them, beside them.
ui: install
	@mkdir -p $(DAGSTER_HOME)
	BMLT_CONFIG=$(CONFIG) $(BIN)/dagster dev -w workspace.yaml \
		$(if $(filter $(abspath $(CONFIG)),$(abspath $(wildcard configs/*.yaml))),,-w deploy/workspace-config.yaml)

# Keeps .dagster_home/dagster.yaml, the committed link to deploy/instance/local/dagster.yaml.
clean:
	rm -rf data
	find .dagster_home -mindepth 1 -maxdepth 1 ! -name dagster.yaml -exec rm -rf {} +
