# Two commands do everything: `make setup` installs, `make test` tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# Where pip gets torch when it has no CPU wheel of its own (a Linux machine without a local wheel), e.g.
# `make setup TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu`; only the torch line uses it. Empty: pip's defaults.
TORCH_INDEX_URL ?=
NODE_LLAMA_CPP_VERSION ?= 3.22.1

.PHONY: setup test data lint format bench clean

setup:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so the local CPU wheel is used and no CUDA build is pulled
	$(BIN)/pip install -q $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL) )torch==$(TORCH_VERSION) numpy
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/python -m slmkit.lm_eval_plugin   # lets the plain `lm_eval --model slmkit ...` find our model and tasks
	# a second venv with transformers 4.x: the HF export is tested against both majors (tests/test_export_tf4.py)
	PY=$(PY) TORCH_VERSION=$(TORCH_VERSION) TORCH_INDEX_URL=$(TORCH_INDEX_URL) bash scripts/setup_tf4.sh
	# node-llama-cpp: a prebuilt llama.cpp from npm, which runs our GGUF exports in tests/test_gguf.py
	@if command -v npm >/dev/null; then npm install --silent --no-audit --no-fund --prefix build/node node-llama-cpp@$(NODE_LLAMA_CPP_VERSION); \
	else echo "note: no npm, so the GGUF export is not run by llama.cpp in the tests (apt-get install npm; .ci/run does)"; fi
	@$(BIN)/python -c "import torch, slmkit; print('slmkit', slmkit.__version__, '| torch', torch.__version__)"

# The public files the data-dependent tests read, sha256-checked, into data/shared/ (git-ignored): the tests read it
# when SLM_DATA_DIR does not name a folder. Standard-library Python only, so it works before `make setup` too.
data:
	$(PY) scripts/fetch_data.py

test:
	SLM_DATA_DIR=$${SLM_DATA_DIR:-../shared/data} $(BIN)/python -m pytest -q tests

lint:
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/lint-imports   # the layer contract (pyproject.toml [tool.importlinter]): imports point down only

format:
	$(BIN)/ruff format src tests benchmarks scripts
	$(BIN)/ruff check --fix src tests benchmarks scripts

clean:
	rm -rf $(VENV) .venv-tf4 build *.egg-info .pytest_cache
