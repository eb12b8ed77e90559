# relaxrl — common tasks. `make setup` creates .venv with the tested versions.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast bench clean

$(BIN)/relaxrl: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,mlip]"
	touch $(BIN)/relaxrl

setup: $(BIN)/relaxrl

demo: setup
	$(BIN)/relaxrl train --config configs/demo.toml

test: setup
	bash scripts/sysdeps.sh
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -rs --durations=15

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,bench]"
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
