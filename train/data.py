"""Streaming training data: WebDataset shards -> augmented, tokenized batches. Nothing is extracted to disk.

Stage: `train`. In: shards in img2dataset's WebDataset layout (`KEY.jpg`, `KEY.txt`, `KEY.json` per
sample), named by local paths (or a directory of them), fsspec URLs (`s3://`, `gs://`, `hf://`,
`file://`), `pipe:` commands or http(s) URLs, with brace patterns (`shards/x/{00000..00099}.tar`) and
`::` between several specs.
Out: dicts `{"images": uint8 (n, 3, s, s), "texts": int64 (n, context), "keys": [...], "skipped": {...}}`
(a worker's errors after its last batch come in a dict with no samples: `{"keys": [], "skipped": {...}}`).
Images stay uint8 until they reach the device (`to_model_input`): a quarter of the bytes through the
worker queues and pinned memory, and the normalisation runs on the GPU.

The pipeline (`make_pipeline`), top to bottom:
  shard list (shuffled per epoch, or drawn with replacement) -> split by node -> split by worker ->
  tar to samples -> shuffle buffer -> decode + random resized crop -> batch + tokenize.
Tokenizing happens at batching: one call into the Rust tokenizer per batch instead of one per caption.

Epochs. Finite mode: the shard list is shuffled with a seed of (seed, epoch), the same on every rank and
worker, then dealt out by rank and by worker, so each sample is read exactly once per epoch (tested).
Ranks can hold different numbers of samples; train.py ends the epoch for all ranks as soon as one runs
out (one tiny all-reduce per step), so no rank waits forever in a collective. Resampled mode (for many
nodes, or fewer shards than ranks x workers): each worker draws shards with replacement from its own
seeded stream, and every worker yields the same number of batches per epoch (`with_epoch`), so all ranks
take the same number of steps.

Determinism: every random choice (shard order, shuffle buffer, crops) comes from a `random.Random`
seeded by (seed, epoch, rank, worker), so a resumed run can replay an epoch's batch order exactly.

Corrupt data (truncated tars, missing files, undecodable images, captions that are not UTF-8) is
skipped and counted per reason with `on_error="skip"`, and raised with `on_error="raise"` (tests).

Augmentation is CLIP's only one: "a random square crop from resized images" (Radford et al. 2021,
section 2.5), implemented as torchvision's RandomResizedCrop with open_clip's training defaults
(`AugmentationCfg.scale = (0.9, 1.0)`, aspect ratio 3/4..4/3, bicubic) using PIL only (torchvision is not a
dependency: it does not install beside this torch build).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import random
from collections import Counter
from functools import partial
from pathlib import Path

import fsspec
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader
from webdataset.tariterators import group_by_keys, tar_file_expander

from pipeline.common.images import DECODE_ERRORS, open_rgb
from train.config import DataCfg
from train.tokenizer import DEFAULT_MERGES, ClipTokenizer

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip constants.OPENAI_DATASET_MEAN
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)   # open_clip constants.OPENAI_DATASET_STD
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")          # img2dataset's output formats
CROP_RATIO = (3 / 4, 4 / 3)                          # torchvision RandomResizedCrop default ratio


def seed_of(*parts) -> int:
    """A 64-bit seed from any parts; the same in every process (unlike `hash()` of a str)."""
    return int.from_bytes(hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


def expand_shards(spec: str | list[str]) -> list[str]:
    """Brace patterns and `::`-separated specs -> the list of shard URLs; a local directory means its *.tar."""
    if isinstance(spec, str) and Path(spec).is_dir():
        urls = sorted(str(p) for p in Path(spec).glob("*.tar"))
    else:
        urls = wds.shardlists.expand_urls(spec) if isinstance(spec, str) else list(spec)
    if not urls:
        raise ValueError(f"no shards in {spec!r}")
    return urls


def count_samples(urls: list[str]) -> int | None:
    """Samples in the shards from img2dataset's `NNNNN_stats.json` ("successes"); None if any is missing."""
    total = 0
    for url in urls:
        if url.startswith("pipe:") or not url.endswith(".tar"):
            return None
        try:
            with fsspec.open(url[: -len(".tar")] + "_stats.json", "rt") as f:
                total += int(json.load(f)["successes"])
        except (OSError, KeyError, ValueError):
            return None
    return total


class SkipCounter:
    """The error policy of one worker's pipeline: count (and log) or re-raise, by exception type."""

    def __init__(self, on_error: str):
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', not {on_error!r}")
        self.on_error, self.total = on_error, 0
        self.counts: Counter = Counter()

    def handler(self, exn: Exception) -> bool:
        """A webdataset `handler=`: True means skip and continue."""
        if self.on_error == "raise":
            raise exn
        self.counts[type(exn).__name__] += 1
        self.total += 1
        if self.total <= 10 or self.total % 1000 == 0:   # the counts go to metrics.jsonl; the log shows examples
            log.warning("skipping corrupt data (%d so far in this worker): %r", self.total, exn)
        return True

    def take(self) -> dict:
        """Counts since the last call (shipped with each batch back to the training process)."""
        counts, self.counts = dict(self.counts), Counter()
        return counts


def worker_rng(seed: int, epoch: int, purpose: str) -> random.Random:
    """A generator for this (rank, DataLoader worker); called when iteration starts, inside the worker."""
    rank, _, worker, _ = wds.utils.pytorch_worker_info()
    return random.Random(seed_of(seed, epoch, rank, worker, purpose))


# ---- pipeline stages: generators over dicts ----------------------------------------------------------------

def open_shards(shards, handler):
    """{"url"} -> {"url", "stream"}; fsspec for paths and object stores, webdataset's gopen for pipe:/http."""
    for shard in shards:
        url = shard["url"]
        try:
            if url.startswith(("pipe:", "http://", "https://")):
                stream = wds.gopen(url)
            else:
                stream = fsspec.open(url, "rb").open()
            yield dict(shard, stream=stream)
        except OSError as exn:
            exn.args = exn.args + (url,)
            if not handler(exn):
                break


def tar_to_samples(shards, handler):
    """Shard streams -> samples {"__key__", "jpg", "txt", ...}: webdataset's tar reader with our opener."""
    return group_by_keys(tar_file_expander(open_shards(shards, handler), handler=handler), handler=handler)


def shuffle_samples(samples, bufsize: int, initial: int, seed: int, epoch: int):
    """A shuffle buffer, as webdataset's: it fills two-for-one up to `bufsize`, yielding from `initial` on."""
    rng = worker_rng(seed, epoch, "shuffle")
    samples, buffer = iter(samples), []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) < bufsize:
            buffer.extend(itertools.islice(samples, 1))
        if len(buffer) >= min(initial, bufsize):
            yield _pop_random(buffer, rng)
    while buffer:
        yield _pop_random(buffer, rng)


def _pop_random(buffer: list, rng: random.Random):
    i = rng.randrange(len(buffer))
    buffer[i], buffer[-1] = buffer[-1], buffer[i]
    return buffer.pop()


def decode_samples(samples, image_size: int, crop_scale, seed: int, epoch: int, skips: SkipCounter):
    """Raw samples -> {"__key__", "image": uint8 (s, s, 3), "caption": str}; corrupt ones go to `skips`."""
    rng = worker_rng(seed, epoch, "augment")
    for sample in samples:
        try:
            image, caption = sample_image_and_caption(sample)
            yield {"__key__": sample["__key__"], "image": train_transform(image, image_size, crop_scale, rng),
                   "caption": caption}
        except DECODE_ERRORS as exn:
            exn.args = exn.args + (sample.get("__url__"), sample.get("__key__"))
            skips.handler(exn)


def sample_image_and_caption(sample: dict) -> tuple[bytes, str]:
    image = next((sample[ext] for ext in IMAGE_EXTS if ext in sample), None)
    if image is None or "txt" not in sample:
        raise ValueError(f"sample has no image or no caption (fields: {sorted(k for k in sample if k[0] != '_')})")
    return image, sample["txt"].decode("utf-8")


# ---- images ------------------------------------------------------------------------------------------------

def random_resized_crop_box(width: int, height: int, scale, rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params (10 tries, then a centre crop), as a PIL box."""
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif in_ratio > CROP_RATIO[1]:
        w, h = round(height * CROP_RATIO[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def train_transform(data: bytes, size: int, scale, rng: random.Random) -> np.ndarray:
    # the smallest crop side is about sqrt(0.9 * 3/4) = 0.82 of the image side: decode at >= size / 0.8
    image = open_rgb(data, math.ceil(size / 0.8))
    box = random_resized_crop_box(*image.size, scale, rng)
    return np.asarray(image.resize((size, size), Image.BICUBIC, box=box))


def to_model_input(images: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 (n, 3, s, s) -> float, normalised with CLIP's mean/std, on `device`."""
    images = images.to(device, non_blocking=True).float().div_(255)
    mean = torch.tensor(OPENAI_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=images.device).view(1, 3, 1, 1)
    return images.sub_(mean).div_(std)


# ---- batches -----------------------------------------------------------------------------------------------

class Collate:
    """Samples -> one batch; tokenizes the captions in one call and attaches the skip counts."""

    def __init__(self, tokenizer: ClipTokenizer, skips: SkipCounter):
        self.tokenizer, self.skips = tokenizer, skips

    def __call__(self, samples: list[dict]) -> dict:
        images = torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2)
        return {"images": images, "texts": torch.from_numpy(self.tokenizer([s["caption"] for s in samples])),
                "keys": [s["__key__"] for s in samples], "skipped": self.skips.take()}


def hand_over_last_skips(batches, skips: SkipCounter):
    """Errors met after a worker's last batch would go uncounted: send them in a batch with no samples."""
    yield from batches
    if skips.counts:
        yield {"keys": [], "skipped": skips.take()}


def make_pipeline(urls: list[str], cfg: DataCfg, image_size: int, context_length: int, *, seed: int, epoch: int,
                  partial_batches: bool = True, batches_per_worker: int = 0) -> wds.DataPipeline:
    """One epoch of batches for this rank, as a WebDataset pipeline (iterate it, or wrap it in a DataLoader)."""
    tokenizer = ClipTokenizer(cfg.merges or DEFAULT_MERGES, context_length)
    skips = SkipCounter(cfg.on_error)
    if cfg.resampled:
        # worker_seed defaults to rank * 1000 + worker: each worker draws its own stream of shards
        shards = [wds.ResampledShards(urls, seed=seed_of(seed, epoch) % 2**31, deterministic=True)]
    else:
        # same shuffled order everywhere, then dealt out: each shard goes to exactly one (rank, worker)
        shards = [wds.SimpleShardList(urls, seed=seed_of(seed, epoch)), wds.split_by_node, wds.split_by_worker]
    pipeline = wds.DataPipeline(
        *shards,
        partial(tar_to_samples, handler=skips.handler),
        partial(shuffle_samples, bufsize=cfg.shuffle_buffer, initial=cfg.shuffle_initial, seed=seed, epoch=epoch),
        partial(decode_samples, image_size=image_size, crop_scale=cfg.crop_scale, seed=seed, epoch=epoch, skips=skips),
        wds.batched(cfg.batch_size, collation_fn=Collate(tokenizer, skips), partial=partial_batches),
        partial(hand_over_last_skips, skips=skips),
    )
    if cfg.resampled:
        if batches_per_worker <= 0:
            raise ValueError("resampled mode needs batches_per_worker > 0 (set data.epoch_samples)")
        pipeline = pipeline.with_epoch(nbatches=batches_per_worker)
    return pipeline


def make_loader(urls: list[str], cfg: DataCfg, image_size: int, context_length: int, *, seed: int, epoch: int,
                world_size: int = 1, pin_memory: bool = False) -> DataLoader:
    """The training loader for one epoch.

    With more than one rank the last partial batch of each worker is dropped: the all-gather in the loss
    needs the same batch size on every rank. Resampled mode needs `cfg.epoch_samples` (or stats files).
    """
    batches_per_worker = 0
    if cfg.resampled:
        epoch_samples = cfg.epoch_samples or count_samples(urls)
        if not epoch_samples:
            raise ValueError("resampled mode: set data.epoch_samples (no *_stats.json beside the shards)")
        steps = max(1, epoch_samples // (cfg.batch_size * world_size))
        batches_per_worker = math.ceil(steps / max(1, cfg.workers))
    elif len(urls) < world_size * max(1, cfg.workers):
        log.warning("%d shards for %d ranks x %d workers: some workers get no shard (use more shards or "
                    "--resampled)", len(urls), world_size, max(1, cfg.workers))
    pipeline = make_pipeline(urls, cfg, image_size, context_length, seed=seed, epoch=epoch,
                             partial_batches=world_size == 1, batches_per_worker=batches_per_worker)
    # prefetch 2 batches per worker (torch's default): ViT-B/32 batches of 256 are 38 MB of uint8 in /dev/shm each
    return DataLoader(pipeline, batch_size=None, num_workers=cfg.workers, pin_memory=pin_memory,
                      prefetch_factor=2 if cfg.workers else None, persistent_workers=False)
