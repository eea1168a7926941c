# Set-up and everyday commands. Every target builds .venv itself, so a fresh machine needs only python3.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# torch first, pinned: this resolves to the local CPU wheel; an unpinned torch pulls the CUDA build (GBs).
TORCH   := torch==2.13.0

.PHONY: demo test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[hf,export]'
	touch $@

$(VENV)/.installed-all: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[hf,export,test]'
	touch $@ $(VENV)/.installed-base

demo: $(VENV)/.installed-base
	$(BIN)/python -m edgeprune.demo

test: $(VENV)/.installed-all
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed-all
	$(BIN)/python bench/plan_prune.py --out bench/out/plan_prune.md
	$(BIN)/python bench/export_speed.py --out bench/out/export_speed.md
	$(BIN)/python bench/export_time.py --out bench/out/export_time.md

clean:
	rm -rf $(VENV) build dist .pytest_cache
