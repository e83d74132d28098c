"""Streaming contrastive (CLIP) trainer for the shards this project builds.

Modules, in the order data flows through them:
  tokenizer.py  CLIP's BPE (49,408 ids, context 77), open_clip's ids on any string, fast batch encoding
  data.py       one WebDataset pipeline: shards -> shuffle -> split by node/worker -> samples -> decode/crop -> batches
  model.py      CLIP (ViT image tower, causal text tower) with open_clip's parameter names
  loss.py       the symmetric contrastive loss and the distributed feature gather
  train.py      the loop: AdamW, warm-up + cosine, bf16, DDP, atomic checkpoints, resume   (python -m train.train)
  weights.py    one loader for our, open_clip's and OpenAI's weight files; `--model` architectures
  zeroshot.py   zero-shot classification and retrieval of a checkpoint                     (python -m train.zeroshot)
  export.py     weights-only file + open_clip model config of a run                      (python -m train.export)
  config.py     the per-component configs; shapes and recipes live in configs/*.json
  synthetic.py, mnist.py   generated and MNIST-derived shards for tests, benchmarks and the demo
"""
