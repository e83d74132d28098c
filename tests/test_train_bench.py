"""Tests of bench/bench_train.py's pieces on tiny generated shards (the full benchmark runs in `make bench`)."""

from __future__ import annotations

import pytest

from bench import bench_train
from train.data import expand_shards
from demo.synthetic import write_shards


@pytest.mark.slow
def test_loader_and_training_measurements_render_a_section(tmp_path):
    write_shards(tmp_path, "noise", shards=2, per_shard=40, image_size=48)
    shards = f"{tmp_path}/{{00000..00001}}.tar"
    loader = bench_train.loader_suite(expand_shards(shards), image_size=32, context=32, workers=1)
    assert loader["raw_tar"]["samples"] == loader["loader_one_core"]["samples"] == 80
    assert loader["loader_workers"]["samples"] == 80
    training = bench_train.time_training(shards, bench_train.ROOT / "train/configs/tiny.json", "cpu", 3,
                                         ["--batch-size", "16", "--workers", "0", "--set", "run.threads=1"])
    assert training["steps"] == 3 and training["samples_per_s"] > 0 and training["config"] == "train/configs/tiny.json"
    md = bench_train.markdown({"machine": {"cpu": "x", "cores": 2, "memory_gb": 1, "python": "3", "date_utc": "now"},
                               "cpu_loader": loader, "cpu_train": training})
    assert "| raw `tarfile` read (reference) |" in md and "GPU: not measured" in md
