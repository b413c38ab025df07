# varlit: make help lists the targets. GPU users override TORCH, e.g.
#   make install TORCH='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'
SHELL := /bin/bash
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs

.DEFAULT_GOAL := help
.PHONY: help install install-docs test test-all lint format docs demo demo-tiny demo-world-samples clean bench bench-world \
	dreambench world

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install varlit with its dev extras (idempotent)

$(DOCS_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev,docs]'
	touch $(DOCS_STAMP)

install-docs: $(DOCS_STAMP) ## install the docs extra too (mkdocs-material, mkdocstrings), which the test suite builds

test: install-docs ## run the default (fast, offline) test suite, the strict docs build included
	$(BIN)/python -m pytest -q

test-all: install-docs ## run every test, slow ones included
	$(BIN)/python -m pytest -q -m ''

lint: install ## ruff check and format check
	$(BIN)/ruff check varlit tests bench
	$(BIN)/ruff format --check varlit tests bench

format: install ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix varlit tests bench
	$(BIN)/ruff format varlit tests bench

clean: ## remove caches, run outputs and the built site (keeps .venv)
	rm -rf runs site .pytest_cache .ruff_cache

docs: install-docs ## build the documentation site from docs/ into site/ (strict: a broken link or anchor fails)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

DEMO_DIR ?= runs/demo
DEMO_SUBJECT ?= twotone_cup
DEMO_RUN := runs/world-demo

WORLD_PROMPTS ?= '["a photo of a red ball on the beach", "a photo of a blue house in the snow", "a photo of a yellow star at night", "a photo of a green tree in the desert"]'

demo: install ## tune a world subject on CPU (fit, eval base and tuned, compare): a before/after table and picture
	$(BIN)/varlit fit --config experiments/world.yaml --data.subject world:$(DEMO_SUBJECT) \
		--run.name world-demo --run.overwrite true
	$(BIN)/varlit eval --config experiments/world.yaml --data.subject world:$(DEMO_SUBJECT) \
		--eval.adapters base --out $(DEMO_RUN)/eval-base
	$(BIN)/varlit eval --config experiments/world.yaml --data.subject world:$(DEMO_SUBJECT) \
		--run.name world-demo --out $(DEMO_RUN)/eval
	$(BIN)/varlit compare --before $(DEMO_RUN)/eval-base --after $(DEMO_RUN)/eval --out $(DEMO_RUN)
	@echo ""
	@echo "demo done: subject world:$(DEMO_SUBJECT) (photos: varlit/world/subject_photos/$(DEMO_SUBJECT)/)"
	@echo "  before/after table:   $(DEMO_RUN)/compare.md"
	@echo "  side-by-side picture: $(DEMO_RUN)/compare.png"
	@echo "  adapter:              $(DEMO_RUN)/adapter.safetensors"
	@echo "  validation curves:    $(DEMO_RUN)/csv/metrics.csv (val/judge_*), grids in $(DEMO_RUN)/samples/"

demo-tiny: install ## the tuning loop on the random-initialised tiny model (exercises code paths; not results)
	$(BIN)/varlit fit --config experiments/tiny.yaml --run.overwrite true
	$(BIN)/varlit sample --adapter runs/tiny/adapter.safetensors \
		--prompts '["a photo of <placeholder> toy on the beach"]' --seeds '[0, 1]' --out_dir $(DEMO_DIR)/samples
	$(BIN)/varlit eval --config experiments/tiny.yaml --out $(DEMO_DIR)/eval

demo-world-samples: install ## the shipped world model draws a few prompts (no tuning)
	$(BIN)/varlit sample --preset world --prompts $(WORLD_PROMPTS) --seeds '[0, 1]' --out_dir $(DEMO_DIR)/world

world: install ## rebuild the `world` preset from scratch on CPU (T5, VAE, transformer, judge; RESUME=1 continues)
	RESUME=$(or $(RESUME),0) VARLIT=$(BIN)/varlit bash experiments/world/build.sh

bench: install ## speed and memory benchmarks on random weights (tiny on CPU; see bench/RESULTS.md)
	$(BIN)/varlit bench $(BENCH_ARGS)

WORLD_BENCH := $(BIN)/varlit bench --preset world --threads 2 --roofline true --batch_sizes '[16]' --steps 5
bench-world: install ## the world on this CPU: pretraining, tuning (online/bank) and sampling in float32, bf16 and compiled, against the matmul roofline
	$(WORLD_BENCH) --parts '[pretrain, finetune, sampling]' --dtype float32 --out bench/world-float32.json
	$(WORLD_BENCH) --parts '[pretrain, finetune, sampling]' --dtype bfloat16 --out bench/world-bfloat16.json
	$(WORLD_BENCH) --parts '[pretrain]' --dtype bfloat16 --compile true --out bench/world-bfloat16-compiled.json

dreambench: install ## download DreamBench (google/dreambooth) into DIR (default data/dreambench)
	$(BIN)/varlit data dreambench --out $(or $(DIR),data/dreambench)
# ---- ablation sweeps (python -m varlit.sweeps; docs/sweeps.md) ------------------------------
# CONFIG: the experiment config (default: the world); SUBJECTS: subject names ("dog cat", or "all": every
# DreamBench subject, or every world subject for a world config), empty = the config's own subject;
# SEEDS: training seeds ("0 1 2"), one run per seed in <variant>/seed<k>/, summaries give mean and 95 %
# interval; VARIANTS: only these arms (empty = all); STEPS: trainer.max_steps (empty = the config's);
# JOBS: runs in parallel (CPU: one thread each); EVAL=0 scores runs by their last validation instead of a
# `varlit eval` (one process start less per run); ROOT: runs go to $(ROOT)/<sweep>/<subject>/<variant>/;
# ARGS: passed to every fit/eval, e.g. ARGS='--data.cache_dir=/fast/cache --eval.seeds=[0,1]'; {run_dir}
# in a fit argument becomes the run's folder (ARGS='--model.prior.source=bank
# --model.prior.bank.root={run_dir}/prior_bank' gives every run its own prior bank; with SEEDS, {run_dir}/../prior_bank
# one per subject and arm, drawn by the first seed and read by the others).
CONFIG ?= experiments/world.yaml
SUBJECTS ?=
SEEDS ?=
VARIANTS ?=
STEPS ?=
JOBS ?= 1
EVAL ?= 1
ROOT ?= runs
ARGS ?=
sweep_opts = --config $(CONFIG) --root $(ROOT) $(if $(strip $(SUBJECTS)),--subjects "$(SUBJECTS)") \
	$(if $(strip $(SEEDS)),--seeds "$(SEEDS)") $(if $(strip $(VARIANTS)),--variants "$(VARIANTS)") \
	$(if $(strip $(STEPS)),--steps $(STEPS)) $(if $(filter 0,$(EVAL)),--no-eval) \
	$(if $(strip $(ARGS)),-- $(ARGS))
sweep_run = $(if $(filter 1,$(JOBS)),$(BIN)/python -m varlit.sweeps run $(1) $(sweep_opts),\
	$(BIN)/python -m varlit.sweeps launch $(1) --gpus cpu:$(JOBS) --per run $(sweep_opts))

.PHONY: ablate-layers ablate-scales ablate-distill ablate-adapter ablate-identifier ablate-captions ablate-steps ablate-all

ablate-layers: install ## layer selection (all, sa, ca, ffn, ca+ffn, early/late half, every tensor) -> $(ROOT)/ablate-layers/summary.*
	$(call sweep_run,ablate-layers)

ablate-scales: install ## scale weights (uniform, arbooth, inverse_sqrt_area, explicit) -> $(ROOT)/ablate-scales/summary.*
	$(call sweep_run,ablate-scales)

ablate-distill: install ## prior distillation (none, soft 0.1/0.5/1, hard, bank) -> $(ROOT)/ablate-distill/summary.*
	$(call sweep_run,ablate-distill)

ablate-adapter: install ## full CA+FFN vs LoRA r4/r16/r64 (peft) -> $(ROOT)/ablate-adapter/summary.*
	$(call sweep_run,ablate-adapter)

ablate-identifier: install ## learned subject vectors (ARBooth) vs a rare token 'sks' (DreamBooth) -> $(ROOT)/ablate-identifier/summary.*
	$(call sweep_run,ablate-identifier)

ablate-captions: install ## per-photo captions vs one prompt for every photo (world subjects) -> $(ROOT)/ablate-captions/summary.*
	$(call sweep_run,ablate-captions)

ablate-steps: install ## tuning steps against fidelity and drift: ablate-distill's none / soft-0.5 arms validated every CURVE_EVERY steps -> $(ROOT)/ablate-distill/curve.*
	$(MAKE) ablate-distill VARIANTS="none soft-0.5" ARGS="--trainer.val_check_interval=$(or $(CURVE_EVERY),25) $(ARGS)"

ablate-all: ablate-layers ablate-scales ablate-distill ## the three ablations of the paper's ideas in turn (layers, scales, distill)
