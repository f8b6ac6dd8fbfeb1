# The README's commands. Every target creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast cluster lint bench docs docs-serve prometheusrule unasync clean

install: $(STAMP)

# client/ is the callers' library (its own distribution, job-sessions-client): the tests use it.
$(STAMP): pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,dev,docs]" -e client
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m app --host 127.0.0.1 --port 8000

# Three replicas (CLUSTER_REPLICAS=N for more) behind HAProxy, on http://127.0.0.1:8080.
cluster: $(STAMP)
	$(BIN)/python -m cluster

# The tiers (docs/development.md, "Tests"): the suite in TEST_WORKERS processes (its tests mostly
# wait on real servers, so more processes than cores), then the tests that bound latency, alone.
# A file's tests run in one process, in order: a module's shared server starts once, and the
# docs' examples, which build on each other, run as the page reads.
TEST_WORKERS ?= 4
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not serial"
	$(BIN)/python -m pytest -m serial

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow and not serial"

lint: $(STAMP)
	$(BIN)/ruff check app tests bench deploy cluster client tools
	$(BIN)/ruff format --check app tests bench deploy cluster client tools README.md docs
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

# The documentation site (mkdocs.yml, docs/): built into site/ with --strict, as the suite does.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

# After editing deploy/prometheus/alerts.yaml: copy its rules into the PrometheusRule.
prometheusrule:
	$(PYTHON) deploy/prometheus/prometheusrule.py

# After editing the client's async code (client/src/sessions_client/_async/): write the sync
# code from it. A test fails while the two differ (docs/development.md, "The client's sync code").
unasync: $(STAMP)
	$(BIN)/python client/scripts/unasync.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .cluster site client/src/*.egg-info
	find bench/results -type f ! -name HISTORY.md -delete 2>/dev/null || true
