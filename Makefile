# Two commands for a new user: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch goes in first, on its own, and only when the venv has none (a CUDA torch you installed
# there is kept). Which build pip takes depends on the index: from PyPI on Linux, torch==2.13.0 is
# the CUDA build, with several GB of NVIDIA libraries. On a machine without a GPU, take the CPU
# build from PyTorch's CPU wheel index:
#   make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# To switch builds later, `make clean` first.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
TORCH_INDEX := $(if $(TORCH_INDEX_URL),--index-url "$(TORCH_INDEX_URL)")
DEMO_CONFIG ?= configs/text2sql-smollm2.yaml
# `make test-floor`: a second venv with the oldest releases pyproject.toml admits
# (constraints-floor.txt), the quick tests of the modules that call transformers, peft and
# accelerate, and the GGUF load of the default model (it pulls the model once, like `make demo`).
FLOOR_VENV ?= build/floor-venv
FLOOR_TESTS := tests/test_training_run.py tests/test_training_trainer.py tests/test_evaluation_base_vs_lora.py tests/test_models_lora.py \
	tests/test_models_load.py tests/test_data.py
FLOOR_GGUF_TEST := tests/test_models_builtin.py::test_converted_model_matches_gguf[smollm2-135m-instruct]
FLOOR_PYTEST := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(FLOOR_VENV)/bin/python -m pytest -q

.PHONY: install llama-runtime demo test test-fast test-floor bench clean

install: $(VENV)/.installed llama-runtime

# llama.cpp itself for the export tests and the q4_0/q4_k_m/q5_k_m quantizer: the npm package
# node-llama-cpp with its prebuilt CPU libllama (no C++ build; ~15 s from the npm registry), pinned by
# tools/llama-runtime/package-lock.json and kept in build/ so nothing is installed globally. Without
# npm this says so and the llama.cpp tests skip (under CI=true they fail).
LLAMA_RUNTIME := build/llama-runtime
llama-runtime: $(LLAMA_RUNTIME)/.installed

$(LLAMA_RUNTIME)/.installed: tools/llama-runtime/package.json tools/llama-runtime/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		rm -rf $(LLAMA_RUNTIME) && mkdir -p $(LLAMA_RUNTIME) && cp $^ $(LLAMA_RUNTIME)/ && \
		(cd $(LLAMA_RUNTIME) && npm ci --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error) && \
		touch $@; \
	else echo "npm not found: llama.cpp ($(LLAMA_RUNTIME)) not installed; its tests will skip"; fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: install
	$(BIN)/loratune models pull smollm2-135m-instruct
	$(BIN)/loratune run $(DEMO_CONFIG) --overwrite

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not browser"

$(FLOOR_VENV)/.installed: pyproject.toml constraints-floor.txt
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FLOOR_VENV)/bin/python -c "import torch" 2>/dev/null || $(FLOOR_VENV)/bin/python -m pip install --quiet $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(FLOOR_VENV)/bin/python -m pip install --quiet -e ".[dev]" -c constraints-floor.txt
	touch $@

test-floor: $(FLOOR_VENV)/.installed
	$(FLOOR_VENV)/bin/python -m pip list 2>/dev/null | grep -iE '^(torch|transformers|peft|accelerate) '
	quick=0; $(FLOOR_PYTEST) -m "not slow and not browser" $(FLOOR_TESTS) || quick=$$?; \
	$(FLOOR_PYTEST) "$(FLOOR_GGUF_TEST)" && exit $$quick

bench: install
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/sql_suite_agreement.py
	$(BIN)/python bench/serve_speed.py

clean:
	rm -rf $(VENV) $(FLOOR_VENV) $(LLAMA_RUNTIME) runs merged
