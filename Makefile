# Livia: `make run` serves it, `make test` checks it. Both set themselves up.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
#: The runtime dependencies alone (`make run`): no test or lint tools.
RUN_STAMP := $(VENV)/.installed-runtime

.PHONY: setup run test lint typecheck pytest bench screenshots format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP) $(RUN_STAMP)

$(RUN_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	@touch $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/livia serve

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: setup
	$(BIN)/mypy src/livia

# Three workers on two cores: most tests wait on real servers and processes, not the CPU.
# One worker per test file (loadfile), so a file's servers and fixtures stay together.
pytest: setup
	$(BIN)/python -m pytest -q -n 3 --dist loadfile

test: lint typecheck pytest

bench: setup
	$(BIN)/python -m benchmarks.overhead
	$(BIN)/python -m benchmarks.redis_admission
	$(BIN)/python -m benchmarks.replicas  # its paced latency runs want a quiet machine: first
	$(BIN)/python -m benchmarks.load -n 1000 -m 3 --store postgres
	$(BIN)/python -m benchmarks.load -n 1000 -m 3 --store postgres --workers 2
	$(BIN)/python -m benchmarks.load -n 50 -m 3 --store postgres --limits reference
	$(BIN)/livia bench

# Regenerate the README's pictures (headless chromium, installed on first use).
screenshots: setup
	LIVIA_SCREENSHOTS=docs/img $(BIN)/python -m pytest -q tests/test_browser.py -k real_app_in_demo_mode

format: setup
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
