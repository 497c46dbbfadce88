# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Torch is installed first, pinned; everything else is installed under a constraints file that holds
# torch at the installed version, so no dependency can swap it for a multi-gigabyte CUDA build.
# Users with a GPU override the pin, e.g.:
#   make demo TORCH_SPEC="torch==2.13.0" TORCH_PIP_ARGS="--index-url https://<your torch index>/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
OUT ?= out/demo
# `make demo DEMO_ARGS=--full` runs the thorough assessment instead of the two-minute one.
DEMO_ARGS ?=

BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS := $(VENV)/constraints.txt
STAMP := $(VENV)/.aisec-installed
DEMO_STAMP := $(VENV)/.aisec-demo

.PHONY: demo test test-all test-portable bench fuzz lint clean services

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(CONSTRAINTS): $(BIN)/python
	$(PIP) install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > $(CONSTRAINTS)

# Everything the tests, lint and benchmarks need.
$(STAMP): $(CONSTRAINTS) pyproject.toml
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP) $(DEMO_STAMP)

# Only what the demo needs (the `demo` extra), so that a newcomer's first command installs little.
$(DEMO_STAMP): $(CONSTRAINTS) pyproject.toml
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[demo]"
	touch $(DEMO_STAMP)

$(VENV)/.aisec-bench: $(STAMP)
	# torchattacks declares torchvision, which it does not need for its attacks and which has no CPU build here.
	$(PIP) install --quiet -c $(CONSTRAINTS) --no-deps torchattacks==3.5.1
	$(PIP) install --quiet -c $(CONSTRAINTS) scipy tqdm requests multiprocess
	# the scanners bench/scan.py compares against
	$(PIP) install --quiet -c $(CONSTRAINTS) picklescan modelscan fickling
	# the drift checks bench/data_validation.py compares against (Apache-2.0)
	$(PIP) install --quiet -c $(CONSTRAINTS) evidently==0.7.23
	touch $@

# Every step is recorded in a tamper-evident audit log (docs/audit.md), verified at the end.
demo: export AISEC_AUDIT_LOG = $(OUT)/audit.db
demo: export AISEC_AUDIT_KEY = $(OUT)/audit.key
demo: $(DEMO_STAMP)
	@mkdir -p $(OUT)
	@test -f $(OUT)/audit.key || $(BIN)/aisec keygen --type ed25519 $(OUT)/audit.key $(OUT)/audit.pub
	$(BIN)/aisec demo --output $(OUT) $(DEMO_ARGS)
	# Supply chain: scan the model file the demo wrote, then describe it in a CycloneDX ML-BOM.
	$(BIN)/aisec scan $(OUT)/model --json $(OUT)/scan.json --sarif $(OUT)/scan.sarif
	$(BIN)/aisec bom $(OUT)/model --output $(OUT)/bom.cdx.json --framework pytorch --dataset digits
	# A model you did not build: inspect the model file with clean data only (backdoors, shortcuts, explanations).
	$(BIN)/aisec inspect $(OUT)/model/digits_cnn.pt --data $(OUT)/clean.npz --factory aisec.demo.models:digits_cnn --output $(OUT)/inspect
	# The audit trail of the steps above: recompute the Merkle tree and check every signed checkpoint.
	$(BIN)/aisec audit verify $(OUT)/audit.db --key $(OUT)/audit.pub

# Test workers (pytest-xdist), one per core; each test module runs whole on one worker, so module fixtures are
# built once. TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2
PYTEST = $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP) lint services
	$(PYTEST)

test-all: $(STAMP) services
	$(PYTEST) -m ""

# What the tests use for real, from Debian's packages when missing and this is a Debian machine we may install
# on: a PostgreSQL server (the audit log's team backend; the tests start and stop their own on a Unix socket),
# Chromium (the HTML report rendered and printed by a real browser) and redis-server (limits and monitor state the
# guard's workers share; the tests start their own on a free loopback port). Without them those tests skip, saying how
# to install them.
services:
	@missing=""; \
	command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian's$$missing for the tests"; \
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
				|| echo "could not install$$missing (their tests will be skipped)"; \
		else \
			echo "not installed and cannot install here:$$missing (their tests will be skipped)"; \
		fi; \
	fi

# The tests whose figures come from trained models, again under torch's portable kernels: float rounding (so
# every training run) then differs as on a CPU without AVX. A threshold read off one machine fails here.
test-portable: $(STAMP)
	ATEN_CPU_CAPABILITY=default $(PYTEST) -m "training and not slow"

bench: $(VENV)/.aisec-bench
	$(BIN)/python bench/evasion.py
	$(BIN)/python bench/scan.py
	$(BIN)/python bench/privacy.py

$(VENV)/.aisec-fuzz: $(STAMP)
	$(PIP) install --quiet -c $(CONSTRAINTS) atheris
	touch $@

# Coverage-guided fuzzing of the scanner (atheris); FUZZ_SECONDS=300 by default.
FUZZ_SECONDS ?= 300
fuzz: $(VENV)/.aisec-fuzz
	$(BIN)/python bench/fuzz_scan.py out/fuzz-corpus -max_total_time=$(FUZZ_SECONDS) -timeout=20 -rss_limit_mb=4096

# Style, then the layer rule (imports only point down; pyproject.toml [tool.importlinter]), then the types of
# src/ (pyproject.toml [tool.mypy]).
lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts examples
	$(BIN)/ruff format --check src tests bench scripts examples
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

clean:
	rm -rf $(VENV) out build *.egg-info src/*.egg-info
