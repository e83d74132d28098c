"""Streaming training data: WebDataset shards -> augmented, tokenized batches. Nothing is extracted to disk.

Stage: `train`. In: shards in img2dataset's WebDataset layout (`KEY.jpg`, `KEY.txt`, `KEY.json` per
sample), as `pipeline.common.files.expand` lists them: local paths or a folder of them, globs, fsspec URLs
(`s3://`, `gs://`, `hf://`), `pipe:` commands or http(s) URLs, brace patterns (`shards/x/{00000..00099}.tar`),
`::` between several specs.
Out: dicts `{"images": uint8 (n, 3, s, s), "texts": int64 (n, context), "keys": [...], "skipped": {...}}`
(a worker's errors after its last batch come in a dict with no samples: `{"keys": [], "skipped": {...}}`);
where the device resizes (`DataCfg.resize`, on CUDA by default) "images" are the unresized crops on a uint8
canvas (n, 3, h, w), with "boxes" float (n, 4) and "size" s. Images stay uint8 until they reach the device
(`to_model_input`): a quarter of the bytes through the worker queues and pinned memory, and the
normalisation (and there the crop's resize) runs on the GPU.

The pipeline (`make_pipeline`), top to bottom:
  shard list (shuffled per epoch, or drawn with replacement) -> split by node -> split by worker ->
  tar to samples -> drop excluded uids -> shuffle buffer -> decode + random resized crop (resized into the
  batch's block, or copied unresized onto its canvas for the device) + tokenize.
Excluded uids (`--exclude`: the `dedup` stage's decisions, eval-set near-duplicates) are dropped before the
shuffle buffer, so they are never decoded, and counted per worker like the corrupt samples (`skipped["excluded"]`).
Tokenizing happens at batching: one call into the Rust tokenizer per batch instead of one per caption.
Epochs, determinism, corrupt data, augmentation and where a sample's time goes: the comment below the imports.
Numbers: BENCHMARKS.md, "Training".
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

import numpy as np
import simplejpeg
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader
from webdataset.tariterators import group_by_keys, tar_file_expander

from pipeline.common import files
from pipeline.common.images import DECODE_ERRORS, image_member, open_rgb
from pipeline.common.records import uid_of_sample
from train.config import DataCfg
from train.tokenizer import DEFAULT_MERGES, ClipTokenizer

# Epochs, determinism, corrupt data, augmentation, time per sample
#
# Epochs. Finite mode: the shard list is shuffled with a seed of (seed, epoch), the same on every rank and
# worker, then dealt out by rank and by worker, so each sample is read exactly once per epoch (tested).
# Ranks can hold different numbers of samples; train.py ends the epoch for all ranks as soon as one runs
# out (one tiny all-reduce per step), so no rank waits forever in a collective. Resampled mode (for many
# nodes, or fewer shards than ranks x workers): each worker draws shards with replacement from its own
# seeded stream, and every worker yields the same number of batches per epoch (`with_epoch`), so all ranks
# take the same number of steps.
#
# Determinism: every random choice (shard order, shuffle buffer, crops) comes from a `random.Random`
# seeded by (seed, epoch, rank, worker), so a resumed run can replay an epoch's batch order exactly.
#
# Corrupt data (truncated tars, missing files, undecodable images, captions that are not UTF-8) is
# skipped and counted per reason with `on_error="skip"`, and raised with `on_error="raise"` (tests).
#
# Augmentation is CLIP's only one: "a random square crop from resized images" (Radford et al. 2021,
# section 2.5), implemented as torchvision's RandomResizedCrop with open_clip's training defaults
# (`AugmentationCfg.scale = (0.9, 1.0)`, aspect ratio 3/4..4/3, bicubic), without torchvision (it does not
# install beside this torch build): the crop box is drawn as torchvision draws it, the JPEG decodes with
# simplejpeg (PIL's pixels, PIL's reduced-size `draft` scale), and the crop is resized once with torch's
# antialiased bicubic (PIL's filter). Where that resize runs is `DataCfg.resize`: in the loader, torch's uint8
# kernel straight into the batch (`decode_into_batches`); or on the device (the default on CUDA), where
# `to_model_input` resizes the whole batch's crops in one op (`resize_boxes`: two batched matmuls with the
# same filter's weights, within 1.1 grey levels of the loader's uint8 result, mean ~0.2, tested). Crops
# wider or taller than `largest_crop` (344 px for a 224 px model: every crop of the shards stage's 256 px
# images fits) are resized in the loader either way, so sources of any size work at the old cost.
#
# Where a sample's time goes at 224 px from 256 px JPEGs (this 2-core shared machine, 2026-12-04, per core;
# BENCHMARKS.md has the current table): tar reading ~0.12 ms, JPEG decode ~0.3-0.4 ms (about PIL's own
# decode: both are libjpeg-turbo), the bicubic resize in the loader ~0.35 ms, first writes into each new
# batch block ~0.1-0.2 ms (page faults; in a DataLoader worker shared memory is also zero-filled when it is
# allocated, ~0.5 ms per MB here, which is why the device path's canvas is sized to the batch's largest crop,
# not to a fixed 344 px), tokenizing and the rest ~0.1 ms. Resizing on the device takes the resize off the
# loader's CPU: the loader runs at ~0.8-1.0x a bare PIL decode here (resizing in the loader: ~0.55-0.65x;
# the PIL-resize path before issue 19: ~0.3x). The device op costs a GPU almost nothing (~0.3 GFLOP per
# 224 px sample) but ~9-13 ms per sample on one CPU core, so CPU training resizes in the loader.

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip constants.OPENAI_DATASET_MEAN
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)   # open_clip constants.OPENAI_DATASET_STD
CROP_RATIO = (3 / 4, 4 / 3)                          # torchvision RandomResizedCrop default ratio
EXCLUDED = "excluded"   # skip-count key of the samples dropped because their uid is excluded (--exclude)


def seed_of(*parts) -> int:
    """A 64-bit seed from any parts; the same in every process (unlike `hash()` of a str)."""
    return int.from_bytes(hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


def count_samples(urls: list[str]) -> int | None:
    """Samples in the shards from img2dataset's `NNNNN_stats.json` ("successes"); None if any is missing."""
    total = 0
    for url in urls:
        if url.startswith("pipe:") or not url.endswith(".tar"):
            return None
        try:
            with files.open_file(url[: -len(".tar")] + "_stats.json", "rt") as f:
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
    """{"url"} -> {"url", "stream"}; `files.open_file` for paths and object stores, webdataset's gopen for
    pipe:/http."""
    for shard in shards:
        url = shard["url"]
        try:
            if url.startswith(("pipe:", "http://", "https://")):
                stream = wds.gopen(url)
            else:
                stream = files.open_file(url, "rb")
            yield dict(shard, stream=stream)
        except OSError as exn:
            exn.args = exn.args + (url,)
            if not handler(exn):
                break


def tar_to_samples(shards, handler):
    """Shard streams -> samples {"__key__", "jpg", "txt", ...}: webdataset's tar reader with our opener."""
    return group_by_keys(tar_file_expander(open_shards(shards, handler), handler=handler), handler=handler)


def drop_excluded(samples, excluded: frozenset[str], skips: SkipCounter):
    """Raw samples minus those whose uid is in `excluded`, each counted in `skips` as EXCLUDED."""
    for sample in samples:
        if excluded and uid_of_sample(sample["__key__"], sample) in excluded:
            skips.counts[EXCLUDED] += 1
            continue
        yield sample


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


def sample_image_and_caption(sample: dict) -> tuple[bytes, str]:
    image = image_member(sample)
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


def decode_for_training(data: bytes, min_side: int) -> np.ndarray:
    """Decode to an RGB uint8 array (h, w, 3), at PIL `draft`'s reduced JPEG scale where the image is large.

    JPEGs decode with simplejpeg (libjpeg-turbo, like PIL's decoder; the RGB pixels are the same as
    `open_rgb`'s, tested) at PIL's power-of-two scale (1, 1/2, 1/4, 1/8), without PIL's per-image object
    overhead; anything else (PNG, WebP, CMYK JPEGs) and anything simplejpeg refuses (broken or truncated
    data) goes through `open_rgb`, so its errors and results are PIL's. The decompression-bomb limit is PIL's.
    """
    if simplejpeg.is_jpeg(data):
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            height = width = 0
        if width * height > 2 * Image.MAX_IMAGE_PIXELS:   # what Image.open raises at
            raise Image.DecompressionBombError(f"{width} x {height} pixels could be a decompression bomb")
        # CMYK/YCCK: libjpeg-turbo's conversion to RGB differs from PIL's by a level, so PIL does those
        if width and height and colorspace in ("YCbCr", "Gray"):
            scale = draft_scale(width, height, min_side)
            try:   # asking for at least ceil(side / scale) pixels selects exactly the 1/scale DCT scaling
                return simplejpeg.decode_jpeg(data, "RGB", min_height=-(-height // scale),
                                              min_width=-(-width // scale))
            except ValueError:
                pass   # PIL decides (warnings simplejpeg treats as errors; truncation: PIL's error)
    return np.array(open_rgb(data, min_side))   # writable: torch.from_numpy needs it


def draft_scale(width: int, height: int, min_side: int) -> int:
    """The JPEG DCT scale denominator PIL's `draft` picks so that both sides stay >= min_side."""
    most = min(width // min_side, height // min_side)
    return next((s for s in (8, 4, 2) if most >= s), 1)


def crop_and_resize(pixels: np.ndarray, box: tuple[int, int, int, int], out: torch.Tensor) -> torch.Tensor:
    """Crop `box` out of (h, w, 3) uint8 pixels and resize it into `out`, uint8 (3, s, s), bicubic, once.

    This is torchvision's `resized_crop` as open_clip's RandomResizedCrop runs it: crop, then resize the
    crop alone (its edges are the image's edges for the filter). torch's uint8 antialiased bicubic (the
    kernel torchvision's tensor transforms use) computes PIL's BICUBIC (a = -0.5, support widened by the
    scale when shrinking) with SIMD code, ~4x faster than PIL here; it stays within 2 levels of PIL's
    `crop(box).resize(...)` (tested). Our earlier `resize(..., box=box)` let the filter reach pixels outside
    the crop at its border, so border pixels differ from that path (interior ones by <= 2 levels, tested).
    The kernel is F.interpolate(..., mode="bicubic", antialias=True)'s, called with `out=` so the result
    lands in the batch's row without a temporary (tested equal to F.interpolate).
    """
    left, top, right, bottom = box
    crop = torch.from_numpy(pixels[top:bottom, left:right]).permute(2, 0, 1)
    if crop.shape[1:] == out.shape[1:]:
        return out.copy_(crop)
    torch.ops.aten._upsample_bicubic2d_aa.out(crop.unsqueeze(0), list(out.shape[1:]), False, None, None,
                                              out=out.unsqueeze(0))
    return out


def decode_and_draw_box(data: bytes, size: int, scale, rng: random.Random) -> tuple[np.ndarray, tuple]:
    """Decode (at the draft scale for `size`) and draw the random resized crop's box: (pixels, box)."""
    # the smallest crop side is about sqrt(0.9 * 3/4) = 0.82 of the image side: decode at >= size / 0.8
    pixels = decode_for_training(data, math.ceil(size / 0.8))
    return pixels, random_resized_crop_box(pixels.shape[1], pixels.shape[0], scale, rng)


def train_transform(data: bytes, size: int, scale, rng: random.Random, out: torch.Tensor | None = None) -> torch.Tensor:
    """Decode, random resized crop (CLIP / open_clip), resize once: uint8 (3, size, size), into `out` if given."""
    pixels, box = decode_and_draw_box(data, size, scale, rng)
    return crop_and_resize(pixels, box, torch.empty((3, size, size), dtype=torch.uint8) if out is None else out)


def largest_crop(size: int) -> int:
    """The largest crop side the loader hands to the device unresized, for a `size` px model (344 for 224).

    It passes every crop of the shards stage's default images (short side 256 = size * 8 / 7, the long side
    any): a crop's short side is at most the image's and its aspect at most 4/3, so its long side is at most
    256 * 4/3 = 341. Rounded up to a multiple of 8. Larger crops (sources well above 256 px) are resized in
    the loader, as with `data.resize` "loader".
    """
    return -(-math.ceil(size * 8 / 7 * 4 / 3) // 8) * 8


def crop_for_device(data: bytes, size: int, scale, rng: random.Random, largest: int) -> np.ndarray:
    """Decode and draw the box as `train_transform` does; the crop unresized, uint8 (h, w, 3), for the device
    to resize (`to_model_input` with boxes). A crop with a side above `largest` comes resized to (size, size)
    as `train_transform` makes it."""
    pixels, (left, top, right, bottom) = decode_and_draw_box(data, size, scale, rng)
    width, height = right - left, bottom - top
    if width > largest or height > largest:
        out = torch.empty((3, size, size), dtype=torch.uint8)
        return crop_and_resize(pixels, (left, top, right, bottom), out).permute(1, 2, 0).numpy()
    crop = pixels[top:bottom, left:right]
    return crop.copy() if pixels.size > 2 * crop.size else crop   # a view, unless it would hold a much larger image


def crops_on_canvas(crops: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops of any sizes -> (uint8 (n, 3, h, w) channels-last canvas holding each at its top left, sized to
    the largest; float (n, 4) boxes (0, 0, width, height)). The block is allocated only now, at the batch's
    largest crop: memory handed to another process costs per byte allocated (shared memory is zero-filled
    up front), so a fixed larger canvas would cost more."""
    height, width = max(c.shape[0] for c in crops), max(c.shape[1] for c in crops)
    block = new_image_block((len(crops), height, width, 3))
    canvas, boxes = block.numpy(), np.zeros((len(crops), 4), dtype=np.float32)
    for row, crop in enumerate(crops):
        canvas[row, :crop.shape[0], :crop.shape[1]] = crop
        boxes[row, 2:] = crop.shape[1], crop.shape[0]
    return block.permute(0, 3, 1, 2), torch.from_numpy(boxes)


RESIZE_MODES = ("auto", "loader", "device")


def resize_on_device(mode: str, device_type: str) -> bool:
    """`DataCfg.resize`: "loader" resizes crops in the loader, "device" in `to_model_input`; "auto" on CUDA
    resizes on the device (the loader's CPU is what limits a GPU), elsewhere in the loader (on a CPU the
    batched op costs more than the loader's resize: bench_train measures both)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"data.resize must be one of {', '.join(RESIZE_MODES)}, not {mode!r}")
    return mode == "device" or (mode == "auto" and device_type == "cuda")


def to_model_input(images: torch.Tensor, device: torch.device | str, boxes: torch.Tensor | None = None,
                   size: int = 0) -> torch.Tensor:
    """uint8 (n, 3, h, w) -> float, normalised with CLIP's mean/std, on `device`; with `boxes`, cropped and resized.

    Without boxes (evaluation, and batches resized in the loader) the images are the model's input already.
    With `boxes` (float (n, 4): left, top, right, bottom in pixels of each image, as `decode_into_batches`
    hands them when the resize runs on the device) each box is resized to `size` x `size` by `resize_boxes`,
    one batched op for the whole batch. The normalisation is one fused multiply-add,
    (x / 255 - mean) / std = x * (1 / (255 std)) - mean / std; it equals the step-by-step formula to float
    rounding (~1e-6).
    """
    images = images.to(device, non_blocking=True)
    if boxes is not None:
        if size <= 0:
            raise ValueError("to_model_input: boxes need the output size")
        # only the rows and columns some box reaches take part (boxes are on the CPU: no device sync)
        height, width = int(math.ceil(boxes[:, 3].max())), int(math.ceil(boxes[:, 2].max()))
        images = resize_boxes(images[:, :, :height, :width], boxes.to(device, non_blocking=True), size)
    scale = torch.tensor([1 / (255 * s) for s in OPENAI_STD], device=images.device).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(OPENAI_MEAN, OPENAI_STD)], device=images.device).view(1, 3, 1, 1)
    return torch.addcmul(shift, images, scale)


def resize_boxes(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop box i out of image i and resize it to (size, size): float (n, 3, size, size) in 0..255, batched.

    The filter is the loader's (`crop_and_resize`: torch's antialiased bicubic, PIL's BICUBIC, a = -0.5,
    support widened by the scale when shrinking, each crop's edges its own edges), written as two matrix
    products, out_i = Wy_i @ (image_i @ Wx_i^T), with (size, h) and (size, w) weight matrices built from the
    boxes (`box_resize_weights`), zero outside each box. Dense products do more arithmetic than the filter's
    few taps, but as two batched matmuls they cost the GPU almost nothing (~0.3 GFLOP per 224 px sample; the
    H2D copy of the uint8 canvas is the larger cost) and need no per-sample launches. On the CPU the same
    op costs several ms per sample (bench_train measures it): CPU training resizes in the loader instead
    (`DataCfg.resize`). The result is the filter's exact value clamped to 0..255, not rounded to uint8 as the
    loader's kernel does (it also rounds between its two passes): within 1.1 levels of it, mean ~0.2 (tested);
    CUDA's TF32 matmuls (the trainer enables them) add at most ~0.25 of a level (TF32 rounding emulated on
    noise images: max 0.24, mean 0.03), below what bf16 autocast rounds the model's input to anyway.
    """
    n, channels, height, width = images.shape
    boxes = boxes.to(torch.float32)
    wy = box_resize_weights(boxes[:, 1], boxes[:, 3], size, height)   # (n, size, height)
    wx = box_resize_weights(boxes[:, 0], boxes[:, 2], size, width)    # (n, size, width)
    # rows first, clamped to 0..255 in between as the loader's kernel does (its first pass stores uint8);
    # plain bmm on (n, channels * h, w) and (n, h, channels * size): no weight matrix copied per channel
    x = images.to(torch.float32).reshape(n, channels * height, width)
    rows = torch.bmm(x, wx.transpose(1, 2)).clamp_(0, 255).view(n, channels, height, size)
    rows = rows.transpose(1, 2).reshape(n, height, channels * size)
    out = torch.bmm(wy, rows).clamp_(0, 255).view(n, size, channels, size)
    return out.permute(0, 2, 1, 3).contiguous()


def box_resize_weights(start: torch.Tensor, end: torch.Tensor, size: int, length: int) -> torch.Tensor:
    """(n, size, length) weights of the antialiased bicubic resize of [start, end) to `size` pixels, per row.

    torch's `_upsample_bicubic2d_aa` (PIL's resample): output pixel i samples the crop at centre
    (i + 0.5) * scale (scale = crop length / size), with the cubic kernel (a = -0.5) stretched by the scale
    when shrinking, and its weights normalised over the taps inside the crop.
    """
    scale = ((end - start) / size).view(-1, 1, 1)
    stretch = scale.clamp(min=1.0)
    out = torch.arange(size, device=start.device, dtype=torch.float32).view(1, -1, 1)
    centre = start.view(-1, 1, 1) + (out + 0.5) * scale
    pixel = torch.arange(length, device=start.device, dtype=torch.float32).view(1, 1, -1)
    d = ((pixel + 0.5 - centre) / stretch).abs()
    a = -0.5
    w = torch.where(d < 1, ((a + 2) * d - (a + 3)) * d * d + 1,
                    torch.where(d < 2, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a, torch.zeros_like(d)))
    inside = (pixel >= start.view(-1, 1, 1)) & (pixel < end.view(-1, 1, 1))
    w = w * inside
    return w / w.sum(dim=2, keepdim=True)


# ---- batches -----------------------------------------------------------------------------------------------

def decode_into_batches(samples, batch_size: int, image_size: int, crop_scale, tokenizer: ClipTokenizer,
                        skips: SkipCounter, seed: int, epoch: int, partial: bool = True, on_device: bool = False):
    """Raw samples -> batches {"images", "texts", "keys", "skipped"} (+ "boxes", "size" when the device
    resizes); corrupt samples go to `skips`.

    Resized in the loader (on_device False): each image is decoded, cropped and resized straight into its
    row of the batch's (n, 3, s, s) uint8 block, so no per-sample image waits for the batch to fill and no
    stack copies them again. Resized on the device: each crop is kept unresized (`crop_for_device`), and
    when the batch is full they are copied once onto an uint8 canvas the size of the largest
    (`crops_on_canvas`), handed on as "images" (n, 3, h, w) with "boxes", float (n, 4) crop boxes in it, and
    "size" (s): `to_model_input(images, device, boxes, size)` resizes them in one batched op. Either way the
    block is what pinned memory and the device copy move in one piece, and the captions are tokenized in one
    call per batch. In a DataLoader worker the block is allocated in shared memory, as torch's
    default_collate does, so handing it to the training process copies nothing.
    """
    rng = worker_rng(seed, epoch, "augment")
    largest = largest_crop(image_size)
    images, crops, keys, captions = None, [], [], []
    for sample in samples:
        if images is None and not on_device:
            images = new_image_block((batch_size, 3, image_size, image_size))
        try:
            data, caption = sample_image_and_caption(sample)
            if on_device:
                crops.append(crop_for_device(data, image_size, crop_scale, rng, largest))
            else:
                train_transform(data, image_size, crop_scale, rng, out=images[len(keys)])
        except DECODE_ERRORS as exn:
            exn.args = exn.args + (sample.get("__url__"), sample.get("__key__"))
            skips.handler(exn)
            continue
        keys.append(sample["__key__"])
        captions.append(caption)
        if len(keys) == batch_size:
            yield make_batch(images, crops, keys, captions, tokenizer, skips, image_size)
            images, crops, keys, captions = None, [], [], []
    if keys and partial:
        yield make_batch(None if images is None else images[:len(keys)], crops, keys, captions, tokenizer, skips,
                         image_size)


def new_image_block(shape: tuple[int, ...]) -> torch.Tensor:
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(math.prod(shape))   # what default_collate does in a worker
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


def make_batch(images: torch.Tensor | None, crops: list[np.ndarray], keys: list[str], captions: list[str],
               tokenizer: ClipTokenizer, skips: SkipCounter, size: int) -> dict:
    batch = {"texts": torch.from_numpy(tokenizer(captions)), "keys": keys, "skipped": skips.take()}
    if images is not None:
        return {"images": images, **batch}
    images, boxes = crops_on_canvas(crops)
    return {"images": images, "boxes": boxes, "size": size, **batch}


def hand_over_last_skips(batches, skips: SkipCounter):
    """Errors met after a worker's last batch would go uncounted: send them in a batch with no samples."""
    yield from batches
    if skips.counts:
        yield {"keys": [], "skipped": skips.take()}


def make_pipeline(urls: list[str], cfg: DataCfg, image_size: int, context_length: int, *, seed: int, epoch: int,
                  partial_batches: bool = True, batches_per_worker: int = 0,
                  exclude: frozenset[str] = frozenset(), device_type: str = "cpu") -> wds.DataPipeline:
    """One epoch of batches for this rank, as a WebDataset pipeline (iterate it, or wrap it in a DataLoader);
    samples whose uid is in `exclude` are dropped and counted. `device_type` (of the training device) decides
    where `cfg.resize="auto"` resizes the crops."""
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
        partial(drop_excluded, excluded=exclude, skips=skips),
        partial(shuffle_samples, bufsize=cfg.shuffle_buffer, initial=cfg.shuffle_initial, seed=seed, epoch=epoch),
        partial(decode_into_batches, batch_size=cfg.batch_size, image_size=image_size, crop_scale=cfg.crop_scale,
                tokenizer=tokenizer, skips=skips, seed=seed, epoch=epoch, partial=partial_batches,
                on_device=resize_on_device(cfg.resize, device_type)),
        partial(hand_over_last_skips, skips=skips),
    )
    if cfg.resampled:
        if batches_per_worker <= 0:
            raise ValueError("resampled mode needs batches_per_worker > 0 (set data.epoch_samples)")
        pipeline = pipeline.with_epoch(nbatches=batches_per_worker)
    return pipeline


def make_loader(urls: list[str], cfg: DataCfg, image_size: int, context_length: int, *, seed: int, epoch: int,
                world_size: int = 1, pin_memory: bool = False, exclude: frozenset[str] = frozenset(),
                device_type: str = "cpu") -> DataLoader:
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
                             partial_batches=world_size == 1, batches_per_worker=batches_per_worker, exclude=exclude,
                             device_type=device_type)
    # prefetch 2 batches per worker (torch's default): ViT-B/32 batches of 256 are 38 MB of uint8 in /dev/shm each
    # resized in the loader, ~50 MB as unresized crops from 256 px images for the device to resize
    return DataLoader(pipeline, batch_size=None, num_workers=cfg.workers, pin_memory=pin_memory,
                      prefetch_factor=2 if cfg.workers else None, persistent_workers=False)
