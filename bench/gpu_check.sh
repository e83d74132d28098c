#!/usr/bin/env bash
# The prepared GPU check of issue 19 (bench/gpu_check.py says what it runs): ViT-B/32 bf16 throughput over
# 300 steps with 12+ loader workers, plus a 50-step checkpoint/resume correctness run; < 10 minutes on one
# GPU; figures in $OUT/gpu_check.json (or --out DIR). CPU test: bench/gpu_check.sh --device cpu --smoke --out DIR
#
# Python: $PYTHON, else the checkout's .venv, else python3. A machine without this project's install needs,
# beside torch, numpy, pillow, fsspec, tokenizers and tqdm: webdataset==0.2.111, braceexpand==0.1.7 and
# simplejpeg==1.9.0 (wheels in WHEELS=DIR are installed into a temporary folder first); the CLIP BPE merges
# ship in train/assets/.
# After a GPU run, where the repository is: python -m bench.gpu_check --record path/to/gpu_check.json
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [ -n "${WHEELS:-}" ]; then
  site=$(mktemp -d)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$WHEELS"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
exec "$PYTHON" -m bench.gpu_check "$@"
