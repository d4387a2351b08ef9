# Two commands do everything: `make setup` installs, `make test` tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: setup test lint format bench clean

setup:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so the local CPU wheel is used and no CUDA build is pulled
	$(BIN)/pip install -q torch==$(TORCH_VERSION) numpy
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/python -m slmkit.lm_eval_plugin   # lets the plain `lm_eval --model slmkit ...` find our model
	@$(BIN)/python -c "import torch, slmkit; print('slmkit', slmkit.__version__, '| torch', torch.__version__)"

test:
	SLM_DATA_DIR=$${SLM_DATA_DIR:-../shared/data} $(BIN)/python -m pytest -q tests

lint:
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/lint-imports   # the layer contract (pyproject.toml [tool.importlinter]): imports point down only

format:
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
