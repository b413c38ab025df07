# varlit: make help lists the targets. GPU users override TORCH, e.g.
#   make install TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'
SHELL := /bin/bash
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install test test-all lint format demo clean bench dreambench world

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
DEMO_PROMPTS ?= '["a photo of <placeholder> toy on the beach", "a photo of <placeholder> toy in the snow"]'

WORLD_PROMPTS ?= '["a photo of a red ball on the beach", "a photo of a blue house in the snow", "a photo of a yellow star at night", "a photo of a green tree in the desert"]'

demo: install ## the shipped world model draws prompts; then the tuning loop (fit, sample, eval) on tiny (CPU, offline)
	$(BIN)/varlit sample --preset world --prompts $(WORLD_PROMPTS) --seeds '[0, 1]' --out_dir $(DEMO_DIR)/world
	$(BIN)/varlit fit --config experiments/tiny.yaml --run.overwrite true
	$(BIN)/varlit sample --adapter runs/tiny/adapter.safetensors --prompts $(DEMO_PROMPTS) \
		--seeds '[0, 1]' --out_dir $(DEMO_DIR)/samples
	$(BIN)/varlit eval --config experiments/tiny.yaml --out $(DEMO_DIR)/eval
	@echo ""
	@echo "demo done"
	@echo "  world samples:   $(DEMO_DIR)/world/ (the shipped, pretrained world model; README 'The world')"
	@echo "  tuning loop on the random-initialised tiny model (its pictures are noise, its numbers not results):"
	@echo "  training grids:  runs/tiny/samples/"
	@echo "  adapter:         runs/tiny/adapter.safetensors"
	@echo "  samples:         $(DEMO_DIR)/samples/"
	@echo "  metrics:         $(DEMO_DIR)/eval/metrics.md (and metrics.json, metrics.csv, grids/)"

world: install ## rebuild the `world` preset from scratch on CPU (T5, VAE, transformer, judge; RESUME=1 continues)
	RESUME=$(or $(RESUME),0) VARLIT=$(BIN)/varlit bash experiments/world/build.sh

bench: install ## speed and memory benchmarks on random weights (tiny on CPU; see bench/RESULTS.md)
	$(BIN)/varlit bench $(BENCH_ARGS)

dreambench: install ## download DreamBench (google/dreambooth) into DIR (default data/dreambench)
	$(BIN)/varlit data dreambench --out $(or $(DIR),data/dreambench)
# ---- ablation sweeps (python -m varlit.sweeps; README "Ablation sweeps") ------------------------------
# CONFIG: the experiment config; SUBJECTS: DreamBench names ("dog cat", or "all"), empty = the config's own
# subject (dog for dreambench.yaml, the bundled toy for tiny.yaml); STEPS: trainer.max_steps (empty = the
# config's); ROOT: runs go to $(ROOT)/<sweep>/<subject>/<variant>/; ARGS: passed to every fit/eval, e.g.
# ARGS='--data.cache_dir=/fast/cache --eval.seeds=[0,1]'.
CONFIG ?= experiments/dreambench.yaml
SUBJECTS ?=
STEPS ?=
ROOT ?= runs
ARGS ?=
sweep_run = $(BIN)/python -m varlit.sweeps run $(1) --config $(CONFIG) --root $(ROOT) \
	$(if $(strip $(SUBJECTS)),--subjects "$(SUBJECTS)") $(if $(strip $(STEPS)),--steps $(STEPS)) \
	$(if $(strip $(ARGS)),-- $(ARGS))

.PHONY: ablate-layers ablate-scales ablate-distill ablate-adapter ablate-all

ablate-layers: install ## layer selection (all, sa, ca, ffn, ca+ffn, early/late half) -> $(ROOT)/ablate-layers/summary.*
	$(call sweep_run,ablate-layers)

ablate-scales: install ## scale weights (uniform, arbooth, inverse_sqrt_area, explicit) -> $(ROOT)/ablate-scales/summary.*
	$(call sweep_run,ablate-scales)

ablate-distill: install ## prior distillation (none, soft 0.1/0.5/1, hard, bank) -> $(ROOT)/ablate-distill/summary.*
	$(call sweep_run,ablate-distill)

ablate-adapter: install ## full CA+FFN vs LoRA r4/r16/r64 (peft) -> $(ROOT)/ablate-adapter/summary.*
	$(call sweep_run,ablate-adapter)

ablate-all: ablate-layers ablate-scales ablate-distill ## the three ablations in turn
