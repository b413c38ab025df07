# varlit: make help lists the targets. GPU users override TORCH, e.g.
#   make install TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'
SHELL := /bin/bash
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install test test-all lint format demo clean bench dreambench

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install varlit with its dev extras (idempotent)

test: install ## run the default (fast, offline) test suite
	$(BIN)/python -m pytest -q

test-all: install ## run every test, slow ones included
	$(BIN)/python -m pytest -q -m ''

lint: install ## ruff check and format check
	$(BIN)/ruff check varlit tests bench
	$(BIN)/ruff format --check varlit tests bench

format: install ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix varlit tests bench
	$(BIN)/ruff format varlit tests bench

clean: ## remove caches and run outputs (keeps .venv)
	rm -rf runs .pytest_cache .ruff_cache

DEMO_DIR ?= runs/demo

demo: install ## the main job on the embedded default (tiny random model, CPU, offline)
	$(BIN)/varlit sample --preset tiny --out_dir $(DEMO_DIR)/samples \
		--prompts '["a photo of a dog on the beach", "a red backpack in the snow"]' --seeds '[0, 1]'
	@echo "demo: images in $(DEMO_DIR)/samples (random-initialised tiny model, so expect noise)"

bench: install ## speed and memory benchmarks on random weights (tiny on CPU; see bench/RESULTS.md)
	$(BIN)/varlit bench $(BENCH_ARGS)

dreambench: install ## download DreamBench (google/dreambooth) into DIR (default data/dreambench)
	$(BIN)/varlit data dreambench --out $(or $(DIR),data/dreambench)
