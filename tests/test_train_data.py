"""Tests of train/data.py: epochs (each sample once, with 2 workers and across ranks), determinism, errors."""

from __future__ import annotations

import io
import random
import tarfile
from collections import Counter

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from train.config import DataCfg
from pipeline.common.files import expand
from train.data import (make_loader, make_pipeline, random_resized_crop_box, to_model_input,
                        count_samples)
from demo.synthetic import write_shards

SIZE, CONTEXT = 16, 16


def cfg(**kw) -> DataCfg:
    base = dict(batch_size=8, workers=2, shuffle_buffer=20, shuffle_initial=4, on_error="raise")
    return DataCfg(**{**base, **kw})


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    write_shards(out, "shapes", shards=4, per_shard=15, image_size=24)
    return expand(f"{out}/{{00000..00003}}.tar", ".tar")


def keys_of(batches) -> list[str]:
    return [k for b in batches for k in b["keys"]]


def test_finite_mode_sees_each_sample_once_per_epoch_with_two_workers(shards):
    for epoch in (0, 1):
        batches = list(make_loader(shards, cfg(), SIZE, CONTEXT, seed=0, epoch=epoch))
        keys = keys_of(batches)
        assert len(keys) == 60 and len(set(keys)) == 60
        assert all(b["images"].shape[1:] == (3, SIZE, SIZE) and b["images"].dtype == torch.uint8 for b in batches)
        assert all(b["texts"].shape[1] == CONTEXT for b in batches)


def test_ranks_split_the_shards_and_together_see_everything_once(shards, monkeypatch):
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append(keys_of(make_pipeline(shards, cfg(workers=0), SIZE, CONTEXT, seed=3, epoch=0)))
    assert len(seen[0]) == len(seen[1]) == 30        # two shards of 15 each
    assert len(set(seen[0]) | set(seen[1])) == 60      # disjoint, and together everything


def test_same_seed_and_epoch_give_the_same_batches(shards):
    def run(epoch):
        return [(b["keys"], b["images"]) for b in make_loader(shards, cfg(), SIZE, CONTEXT, seed=7, epoch=epoch)]
    first, again, other = run(0), run(0), run(1)
    assert [k for k, _ in first] == [k for k, _ in again]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(first, again))   # crops too
    assert [k for k, _ in first] != [k for k, _ in other]


def test_resampled_mode_gives_every_worker_the_same_number_of_batches(shards):
    loader = make_loader(shards, cfg(resampled=True, epoch_samples=80), SIZE, CONTEXT, seed=0, epoch=0)
    batches = list(loader)
    # 80 samples / batch 8 = 10 steps, spread over 2 workers: 5 full batches each
    assert len(batches) == 10 and all(len(b["keys"]) == 8 for b in batches)


def test_stats_files_give_the_epoch_length(shards):
    assert count_samples(shards) == 60
    assert count_samples(["pipe:cat x.tar"]) is None


def write_tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_600_000_000
            tar.addfile(info, io.BytesIO(data))


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (200, 10, 10)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def corrupt_shards(tmp_path):
    write_tar(tmp_path / "good.tar", {"a.jpg": jpeg(), "a.txt": b"a red square", "b.jpg": b"not a jpeg",
                                      "b.txt": b"broken image", "c.jpg": jpeg(), "c.txt": b"\xff\xfe bad utf-8",
                                      "d.txt": b"caption without an image"})
    good = (tmp_path / "good.tar").read_bytes()
    (tmp_path / "truncated.tar").write_bytes(good[: len(good) // 2 + 100])
    return [str(tmp_path / "good.tar"), str(tmp_path / "truncated.tar"), str(tmp_path / "missing.tar")]


def test_corrupt_samples_and_shards_are_skipped_and_counted(corrupt_shards):
    batches = list(make_pipeline(corrupt_shards, cfg(on_error="skip", workers=0), SIZE, CONTEXT, seed=0, epoch=0))
    keys = keys_of(batches)
    assert keys.count("a") >= 1 and "b" not in keys and "c" not in keys and "d" not in keys
    skipped = sum((Counter(b["skipped"]) for b in batches), Counter())
    assert skipped["FileNotFoundError"] == 1                     # missing.tar
    assert skipped["UnidentifiedImageError"] >= 1                 # b.jpg
    assert skipped["UnicodeDecodeError"] >= 1 and skipped["ValueError"] >= 1   # c.txt, d without image


def test_corrupt_samples_raise_when_asked(corrupt_shards):
    with pytest.raises((OSError, ValueError)):
        list(make_pipeline(corrupt_shards[:1], cfg(workers=0), SIZE, CONTEXT, seed=0, epoch=0))


@given(st.integers(1, 400), st.integers(1, 400), st.integers(0, 2**32))
def test_crop_box_lies_inside_the_image(width, height, seed):
    left, top, right, bottom = random_resized_crop_box(width, height, (0.9, 1.0), random.Random(seed))
    assert 0 <= left < right <= width and 0 <= top < bottom <= height


def test_model_input_is_normalised_float():
    images = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    x = to_model_input(images, "cpu")
    assert x.dtype == torch.float32 and x[0, 0, 0, 0].item() == pytest.approx((1 - 0.48145466) / 0.26862954)


def test_pipe_and_file_urls_stream_like_paths(shards):
    urls = [f"pipe:cat {shards[0]}", f"file://{shards[1]}"]
    keys = keys_of(make_pipeline(urls, cfg(workers=0), SIZE, CONTEXT, seed=0, epoch=0))
    assert len(keys) == len(set(keys)) == 30


def test_a_directory_means_its_tar_files(shards):
    from pathlib import Path
    assert expand(str(Path(shards[0]).parent), ".tar") == shards
