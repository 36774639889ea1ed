# Two commands on a fresh machine: `make demo` and `make test`. Both bootstrap .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check bench fuzz faults soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/exchange demo

# the TypeScript verifier (verifier-ts/): its pinned compiler and a build, redone only when
# its sources change; tests/test_verifier_ts.py runs it against the vectors and a live broker
TS_STAMP := verifier-ts/dist/.built
$(TS_STAMP): verifier-ts/package.json verifier-ts/package-lock.json verifier-ts/tsconfig.json $(wildcard verifier-ts/src/*.ts)
	cd verifier-ts && npm ci --no-audit --no-fund --silent && npx tsc -p .
	touch $(TS_STAMP)

test: $(STAMP) $(TS_STAMP)
	$(BIN)/pytest -q

check: $(STAMP)
	$(BIN)/ruff check exchange tests benchmarks
	$(BIN)/mypy

# the long hostile-input run: every decoder, 1,000,000 coverage-guided inputs each (atheris);
# `make test` runs a bounded slice (tests/test_fuzz.py)
fuzz: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,fuzz]'
	$(BIN)/python -m tests.long.fuzz $(if $(RUNS),--runs $(RUNS))

# crash and fault rounds: 100 broker SIGKILLs on sqlite, the NATS fault scenarios ten times,
# the disk-full faults (`make test` runs a slice of each)
faults: $(STAMP)
	$(BIN)/python -m tests.long.faults $(if $(KILLS),--kills $(KILLS))

# 100 nodes connecting, publishing, subscribing and leaving for 30 minutes (not in CI)
soak: $(STAMP)
	$(BIN)/python -m tests.long.soak $(if $(MINUTES),--minutes $(MINUTES))

bench: $(STAMP)
	$(BIN)/python -m benchmarks.validate

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
