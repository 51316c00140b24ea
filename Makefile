# Two commands: `make demo` (the main job on the local stack) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo up deploy test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  # KMS=1: every feed on one customer-managed KMS key; BROWNFIELD=1: adopt an existing estate; FLEET=3: 3 accounts
	$(PY) -m deployments.local.demo $(if $(KMS),--kms) $(if $(BROWNFIELD),--brownfield) $(if $(FLEET),--fleet $(FLEET))

up: $(STAMP)
	$(PY) -m deployments.local.demo --keep $(if $(KMS),--kms) $(if $(BROWNFIELD),--brownfield) $(if $(FLEET),--fleet $(FLEET))

deploy: $(STAMP)  # to the server in PREFECT_API_URL: prefect.yaml and the alerts (README, Deployments)
	$(PY) -m deployments.deploy

test: $(STAMP)
	$(PY) -m pytest -n 4 --dist loadfile --durations=15  # tests mostly wait on servers: 4 workers on 2 cores, a file each; the slowest listed

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy socfeeds tasks flows deployments tests benchmarks

bench: $(STAMP)
	for script in benchmarks/bench_*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf .state $(VENV)
