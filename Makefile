# Two commands on a fresh machine: `make demo` and `make test`. Both bootstrap .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check bench fuzz faults soak clean

# the first run installs for about half a minute: each step says what it does, and pip shows
# what it fetches (one line a package, a bar for the large downloads)
$(STAMP): pyproject.toml
	@echo "setting up $(VENV) (first run only, and again when pyproject.toml changes; ~30 s)"
	@echo "[1/3] creating the virtual environment with $(PYTHON)"
	@$(PYTHON) -m venv $(VENV)
	@echo "[2/3] upgrading pip"
	@$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	@echo "[3/3] installing the exchange and its dependencies"
	@$(BIN)/pip install --disable-pip-version-check --progress-bar on -e '.[dev]'
	@touch $(STAMP)
	@echo "ready: $(BIN)/exchange"

demo: $(STAMP)
	$(BIN)/exchange demo

# what the tests need from Debian: chromium for the operator console's browser tests
# (tests/test_console_browser.py drives it through Playwright, a dev dependency whose wheel
# carries the driver: no browser is downloaded) and promtool (package prometheus) to check the
# alert rules (tests/test_metrics_ops.py). Installed when missing and we may (root, or sudo
# without a password), else we say how.
BROWSER := $(VENV)/.browser
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD := 1
$(BROWSER): $(STAMP)
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  echo "installing the Debian packages the tests need:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	  elif sudo -n true 2>/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "the tests need:$$missing (sudo apt-get install$$missing)" >&2; exit 1; fi; \
	fi
	@touch $(BROWSER)

# the TypeScript verifier (verifier-ts/): its pinned compiler and a build, redone only when
# its sources change; tests/test_verifier_ts.py runs it against the vectors and a live broker
TS_STAMP := verifier-ts/dist/.built
$(TS_STAMP): verifier-ts/package.json verifier-ts/package-lock.json verifier-ts/tsconfig.json $(wildcard verifier-ts/src/*.ts)
	cd verifier-ts && npm ci --no-audit --no-fund --silent && npx tsc -p .
	touch $(TS_STAMP)

test: $(STAMP) $(TS_STAMP) $(BROWSER)
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
