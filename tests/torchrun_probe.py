"""Run under torchrun by tests/test_cluster_train.py: which sample keys does each rank read in epochs 0 and 1?

`python -m torch.distributed.run --nproc_per_node=2 ... -m tests.torchrun_probe SHARDS CONFIG OUT` writes
OUT/rank<R>.json = {"0": [keys of epoch 0], "1": [...]}, read through the trainer's own data pipeline.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from pipeline.common import files
from train import config as config_lib
from train.data import make_pipeline


def main(shards: str, config: str, out: str) -> None:
    dist.init_process_group("gloo")   # rank and world size come from torchrun's environment
    cfg = config_lib.load(config, ["data.workers=0"])
    urls = files.expand(shards, ".tar", check_named=False)   # as train.train lists them
    keys = {}
    for epoch in (0, 1):
        batches = make_pipeline(urls, cfg.data, cfg.model.vision.image_size, cfg.model.text.context_length,
                                seed=cfg.run.seed, epoch=epoch)
        keys[str(epoch)] = [k for batch in batches for k in batch["keys"]]
    Path(out, f"rank{dist.get_rank()}.json").write_text(json.dumps(keys))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
