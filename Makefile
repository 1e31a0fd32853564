# Two commands on a fresh machine: `make demo` and `make test` (which lists its 25 slowest tests). Each creates .venv with pip on
# first use (reused afterwards while pyproject.toml is unchanged) and installs the project into it.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint docs bench-train bench-score clean image

IMAGE ?= vehicle-ray:0.1.0
RAY_IMAGE ?= rayproject/ray:2.60.0-py311-gpu

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	set -o pipefail; $(PY) -m pip install -q -e '.[dev]' 2>&1 | { grep -v '^WARNING: Location' || true; }
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vehicle-ray demo --out demo_output

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --durations=25 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m 'not slow' $(PYTEST_ARGS)

# docs/cli.md is generated from --help (tests/test_docs.py fails while it is stale)
docs: $(STAMP)
	$(PY) -m vehicle_ray.cli_reference > docs/cli.md

lint: $(STAMP)
	$(VENV)/bin/ruff check vehicle_ray jobs bench tests
	$(VENV)/bin/ruff format --check vehicle_ray jobs bench tests
	$(VENV)/bin/lint-imports

bench-train: $(STAMP)
	$(PY) bench/bench_train.py

bench-score: $(STAMP)
	$(PY) bench/bench_score.py

# The cluster image (Dockerfile): make image IMAGE=YOUR_REGISTRY/vehicle-ray:0.1.0, then docker push it.
image:
	docker build --build-arg RAY_IMAGE=$(RAY_IMAGE) -t $(IMAGE) .

clean:
	rm -rf demo_output bench_output
