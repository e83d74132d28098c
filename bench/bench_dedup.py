"""Benchmark and calibration of stage 5 (`dedup`): precision/recall of its hash signals under web edits, and speed.

Calibration: `--eval-size` real images are the eval set, hashed as the stage hashes eval images (every variant,
`phash.variant_hashes`); `--positives` of them are edited the way the web copies images (EDITS: resize up/down,
JPEG down to q20, colour/contrast, blur, crops up to 10%, white borders and blurred re-framing, mirroring,
rotations up to 5 degrees, text and logo overlays, and combinations of two) and must meet their source;
`--negatives` other real images of the same classes, edited the same way, must meet nothing. Distances per
signal come from numpy brute force over the pairs the stage searches (`dedup.SIGNAL_CODE`), so the figures are
the stage's rule. The positives and negatives are split in halves: the first tunes the per-signal thresholds
(`tune`), the second is held out; both are reported at the code's defaults (`dedup.DEFAULT_THRESHOLDS`), which
are set from the tuning half. Optional: the embedding signal OR-ed with the hashes (`--embed-checkpoint`, or
`--encoder-steps N` to train the tiny CLIP here on the leftover images captioned "a photo of a {class}.").

Real images: the CIFAR-10 test JPEGs in `--data` (../shared/data/cifar10-test-jpg.tar.gz: 32x32, the classes
look alike, so the negatives are hard); without `--data`, 64x64 crops of the sample photos in data/sample/photos.

Speed, per core (CPU seconds of this single process; faiss limited to one thread), each next to its reference
measured in the same run: shard-side hashing of 256 px JPEGs (full decode + imagehash.phash as reference);
Hamming range search on 1M hashes (numpy brute force as reference; faiss' indexes beside the stage's
multi-index hashing, each checked for exactness); and the stage end to end (`pipeline.dedup.run`, one process,
every default signal, decisions only and with `--out-shards`) beside the bare hashing rate of the same images.

Run: make bench DATA=../shared/data   or   python -m bench.bench_dedup [--data ../shared/data]  (~10 minutes here)
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import logging
import random
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from bench.report import machine, machine_line, save_results, update_section
from pipeline.dedup import embed, mih, phash
from pipeline.dedup import stage as dedup
from pipeline.common.logs import setup_logging

log = logging.getLogger("bench.bench_dedup")

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "data" / "sample" / "photos"
MIN_PRECISION = 0.99                                          # issue 17: pooled precision >= 0.99,
MIN_RECALL, MIN_EDIT_RECALL = 0.95, 0.90                      # pooled recall >= 0.95, every single edit >= 0.90
# `tune` asks the tuning half for a margin on each: held-out precision came 0.003 below the tuning half's at the
# previous defaults (0.990 vs 0.993, session 6), so a tuning precision of 0.99 would leave the held-out half to chance
TUNE_PRECISION, TUNE_EDIT_MARGIN = 0.995, 0.02
HASH_TARGET, SEARCH_TARGET = 2_000, 5_000                     # DESIGN.md: img/s and queries/s per core
STAGE_TARGET = 2_000                                          # issue 17: dedup end to end, samples/s per core
# cosine thresholds tried: the tiny encoder puts most image pairs above 0.98, so the grid is fine near 1
COSINES = [0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.997, 0.998, 0.999, 0.9995, 0.9998]
SHOWN_COSINES = [0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995]
ENCODER_STEPS = 200                                           # ~3 epochs of the 4,000 training images at batch 64
ENCODER_DESCRIPTION = ("our tiny CLIP (train/configs/tiny.json: ViT 32 px, patch 8, 2 layers of width 64; text 2 "
                       "layers; embed dim 64), captions 'a photo of a {class}.'")


# ---- real images -----------------------------------------------------------------------------------------

def cifar_images(data: Path) -> tuple[list[str], list[bytes]]:
    """Names (`test/<class>/NNNN.jpg`) and bytes of the CIFAR-10 test JPEGs in a fixed order (sorted names)."""
    with tarfile.open(data / "cifar10-test-jpg.tar.gz") as tar:   # read in tar order: a .gz cannot seek back cheaply
        by_name = {m.name: tar.extractfile(m).read() for m in tar if m.isfile() and m.name.endswith(".jpg")}
    names = sorted(by_name)
    return names, [by_name[name] for name in names]


def photo_crops(n: int, size: int = 64, seed: int = 0) -> list[bytes]:
    """n random square crops of the sample photos, resized to `size`, as JPEG q90 (the fallback real images)."""
    rng = random.Random(seed)
    photos = [Image.open(p).convert("RGB") for p in sorted(PHOTOS.iterdir())]
    out = []
    for _ in range(n):
        photo = rng.choice(photos)
        side = int(min(photo.size) * rng.uniform(0.15, 0.4))
        x, y = rng.randrange(photo.width - side), rng.randrange(photo.height - side)
        out.append(jpeg(photo.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.BICUBIC), 90))
    return out


def jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# ---- web edits: what a copy of an eval image looks like by the time it sits in a shard ----------------------
# Each edit works on the image as a web page shows it: the 32 px CIFAR picture enlarged to 256 px (bicubic), as a
# page or img2dataset (resize to 256) would; the copy is saved as JPEG (q90 unless the edit sets the quality).
# Random parameters (crop offsets, where a logo sits) come from a generator seeded by (edit, image index).

def upscale(image: Image.Image, side: int = 256) -> Image.Image:
    return image.resize((side, side * image.height // image.width), Image.Resampling.BICUBIC)


def resize_down_up(im, rng):     # shrunk to 3/4 (a thumbnail of a thumbnail), enlarged again
    return im.resize((im.width * 3 // 4, im.height * 3 // 4), Image.Resampling.BILINEAR).resize(im.size, Image.Resampling.BICUBIC)


def colour_shift(im, rng):       # +15% brightness, -15% saturation
    return ImageEnhance.Color(ImageEnhance.Brightness(im).enhance(1.15)).enhance(0.85)


def contrast(im, rng):           # +30% contrast, -10% brightness
    return ImageEnhance.Brightness(ImageEnhance.Contrast(im).enhance(1.3)).enhance(0.9)


def blur(im, rng):               # a Gaussian blur of radius 2 px at 256 px
    return im.filter(ImageFilter.GaussianBlur(2))


def crop(im, fraction: float, rng: random.Random | None):
    """`fraction` of each side cut away: evenly (rng None) or split at random between the two ends."""
    dx, dy = im.width * fraction, im.height * fraction
    left, top = (dx / 2, dy / 2) if rng is None else (rng.uniform(0, dx), rng.uniform(0, dy))
    return im.crop((round(left), round(top), round(left + im.width - dx), round(top + im.height - dy)))


def crop_6pct(im, rng):          # 3% cut from every side
    return crop(im, 0.06, None)


def crop_10pct(im, rng):         # 10% of width and height cut, anywhere (up to all from one corner)
    return crop(im, 0.10, rng)


def border_10pct(im, rng):       # a white frame of 10% of the side
    pad = im.width // 10
    framed = Image.new("RGB", (im.width + 2 * pad, im.height + 2 * pad), "white")
    framed.paste(im, (pad, pad))
    return framed


def reframe(im, rng):            # placed off-centre on a blurred, enlarged copy of itself (a social-media frame)
    pad = im.width // 10
    canvas = im.resize((im.width + 2 * pad, im.height + 2 * pad)).filter(ImageFilter.GaussianBlur(12))
    canvas.paste(im, (rng.randint(pad // 2, 3 * pad // 2), rng.randint(pad // 2, 3 * pad // 2)))
    return canvas


def hflip(im, rng):
    return ImageOps.mirror(im)


def rotate(im, degrees: float):  # turned about the centre, the corners filled white, the size kept
    return im.rotate(degrees, Image.Resampling.BICUBIC, fillcolor="white")


def rotate_2deg(im, rng):
    return rotate(im, 2.0)


def rotate_5deg(im, rng):
    return rotate(im, -5.0)


def text_overlay(im, rng):       # a watermark line across the bottom
    im = im.copy()
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, im.height - 28, im.width, im.height), fill="black")
    draw.text((6, im.height - 24), "www.example.com/photo", fill="white", font_size=18)
    return im


def logo_overlay(im, rng):       # an opaque logo (18% of the side) in a random corner
    im = im.copy()
    side, margin = im.width * 18 // 100, im.width // 25
    x = margin if rng.random() < 0.5 else im.width - margin - side
    y = margin if rng.random() < 0.5 else im.height - margin - side
    draw = ImageDraw.Draw(im)
    draw.ellipse((x, y, x + side, y + side), fill=(220, 30, 30))
    draw.text((x + side // 4, y + side // 3), "LOGO", fill="white", font_size=side // 4)
    return im


# name -> (edits in order, JPEG quality, enlarge first?); recompress_q20 keeps the 32 px size
EDITS = {
    "resize_up_q40": ((), 40, True), "resize_down_up_q50": ((resize_down_up,), 50, True),
    "recompress_q20": ((), 20, False), "upscale_q95": ((), 95, True),
    "colour_shift": ((colour_shift,), 90, True), "contrast": ((contrast,), 90, True), "blur": ((blur,), 90, True),
    "crop_6pct": ((crop_6pct,), 90, True), "crop_10pct": ((crop_10pct,), 90, True),
    "border_10pct": ((border_10pct,), 90, True), "reframe": ((reframe,), 90, True), "hflip": ((hflip,), 90, True),
    "rotate_2deg": ((rotate_2deg,), 90, True), "rotate_5deg": ((rotate_5deg,), 90, True),
    "text_overlay": ((text_overlay,), 90, True), "logo_overlay": ((logo_overlay,), 90, True),
    # combinations of two
    "hflip+crop_10pct": ((hflip, crop_10pct), 90, True), "colour_shift+border_10pct": ((colour_shift, border_10pct), 90, True),
    "rotate_5deg+resize_q40": ((rotate_5deg,), 40, True), "text_overlay+resize_down_up": ((resize_down_up, text_overlay), 50, True),
    "crop_6pct+logo_overlay": ((crop_6pct, logo_overlay), 90, True), "blur+hflip": ((blur, hflip), 90, True),
}
SINGLE_EDITS = [n for n in EDITS if "+" not in n]


def web_copy(name: str, index: int, data: bytes) -> bytes:
    """The edit `name` applied to one encoded image (its `index` seeds the edit's random choices)."""
    edits, quality, enlarge = EDITS[name]
    rng = random.Random(f"{name}/{index}")
    im = Image.open(io.BytesIO(data)).convert("RGB")
    im = upscale(im) if enlarge else im
    for edit in edits:
        im = edit(im, rng)
    return jpeg(im.resize((256, 256), Image.Resampling.BICUBIC) if enlarge else im, quality)


def _copy_batch(batch: list[tuple[str, int, bytes]], keep_bytes: bool) -> list[tuple]:
    """Worker task: (shard-side hashes, encoded copy or None) of each (edit, index, bytes)."""
    out = []
    for name, index, data in batch:
        copy = web_copy(name, index, data)
        out.append((phash.image_hashes(copy)[0], copy if keep_bytes else None))
    return out


def _variant_batch(batch: list[bytes]) -> list[list[int]]:
    return [phash.eval_image_hashes(d)[0] for d in batch]


def eval_variants(images: list[bytes], workers: int) -> np.ndarray:
    """(n, n_variants) uint64: the stage's eval-side hashes of each image."""
    out = []
    for rows in phash.parallel_map(_variant_batch, phash.batched(images, 250), workers, desc="eval variants"):
        out += rows
    return np.array(out, dtype=np.uint64)


def hash_items(images: list[bytes], workers: int) -> np.ndarray:
    out = []
    for hashes in phash.parallel_map(_hash_batch, phash.batched(images, 500), workers, desc="hash"):
        out += hashes
    return np.array(out, dtype=np.uint64)


def _hash_batch(batch: list[bytes]) -> list[int]:
    return [phash.hash_image_bytes(d)[0] for d in batch]


# ---- calibration -----------------------------------------------------------------------------------------

SIGNALS = phash.SIGNAL_ORDER
NEVER = 255   # the distance of a pair a signal cannot see (no frame found: no frame-trimmed hash)


def signal_distances(signatures: list[tuple], variants: np.ndarray, chunk: int = 50) -> np.ndarray:
    """(queries, signals, eval images) uint8: per hash signal, the smallest Hamming distance over the pairs of
    (shard hash, eval variant) the stage searches for it (`dedup.SIGNAL_CODE`), by numpy brute force."""
    from pipeline.dedup import SIGNAL_CODE
    n_eval = len(variants)
    out = np.full((len(signatures), len(SIGNALS), n_eval), NEVER, dtype=np.uint8)
    for start in range(0, len(signatures), chunk):
        part = signatures[start:start + chunk]
        for k in range(len(phash.QUERY_KINDS)):
            present = [i for i, sig in enumerate(part) if sig[k] is not None]
            if not present:
                continue
            q = np.array([part[i][k] for i in present], dtype=np.uint64)
            d = np.bitwise_count(q[:, None, None] ^ variants[None, :, :]).astype(np.uint8)   # (q, eval, variants)
            for c in range(len(SIGNALS)):
                cols = np.nonzero(SIGNAL_CODE[k] == c)[0]
                if len(cols):
                    rows = start + np.array(present)
                    out[rows, c] = np.minimum(out[rows, c], d[:, :, cols].min(axis=2))
    return out


def closeness(d_pos: np.ndarray, sources: np.ndarray, d_neg: np.ndarray) -> dict:
    """Per positive and signal, the distance to its source and the smallest to any other eval image; per negative
    and signal, the smallest to any eval image ((n, signals) uint8 each)."""
    rows = np.arange(len(d_pos))
    source = d_pos[rows, :, sources]
    others = d_pos.copy()
    others[rows, :, sources] = NEVER
    return {"source": source, "other": others.min(axis=2), "negative": d_neg.min(axis=2)}


def pr_of(c: dict, limits: np.ndarray) -> dict:
    """Precision/recall of the rule "some signal within its limit" (limits per signal, -1 = off). TP: a positive
    matching its source; FP: a negative matching any eval image, or a positive matching only other eval images."""
    hit_source = (c["source"] <= limits).any(axis=1)
    hit_other = (c["other"] <= limits).any(axis=1)
    hit_negative = (c["negative"] <= limits).any(axis=1)
    tp = int(hit_source.sum())
    fp = int(hit_negative.sum() + (~hit_source & hit_other).sum())
    return {"tp": tp, "fp": fp, "positives": len(hit_source), "negatives": len(hit_negative),
            "recall": tp / len(hit_source), "precision": tp / (tp + fp) if tp + fp else 1.0,
            "fp_per_negative": float(hit_negative.mean())}


def first_signals(c: dict, limits: np.ndarray) -> dict[str, int]:
    """How many positives each signal found first (the stage reports the first signal of SIGNAL_ORDER)."""
    hit = c["source"] <= limits
    found = hit.any(axis=1)
    first = hit.argmax(axis=1)[found]
    return {SIGNALS[i]: int(n) for i, n in zip(*np.unique(first, return_counts=True))}


def false_positives(close: dict[str, dict], limits: np.ndarray) -> dict:
    """Where the false positives come from: per signal (the first of SIGNAL_ORDER within its limit) and per
    negative image (the same negative edited 22 ways may meet the same eval image every time)."""
    by_signal, by_negative = {}, {}
    for c in close.values():
        hit = c["negative"] <= limits
        for k in np.flatnonzero(hit.any(axis=1)).tolist():
            signal = SIGNALS[int(hit[k].argmax())]
            by_signal[signal] = by_signal.get(signal, 0) + 1
            by_negative[k] = by_negative.get(k, 0) + 1
        lost = ~(c["source"] <= limits).any(axis=1) & (c["other"] <= limits).any(axis=1)
        by_signal["positive meeting another image"] = by_signal.get("positive meeting another image", 0) + int(lost.sum())
    top = sorted(by_negative.values(), reverse=True)
    return {"by_signal": dict(sorted(by_signal.items(), key=lambda kv: -kv[1])), "negatives": len(by_negative),
            "from_top_6_negatives": sum(top[:6]), "negative_fps": sum(top)}


def pooled(rows: list[dict]) -> dict:
    tp, fp = sum(r["tp"] for r in rows), sum(r["fp"] for r in rows)
    return {"tp": tp, "fp": fp, "recall": tp / sum(r["positives"] for r in rows),
            "precision": tp / (tp + fp) if tp + fp else 1.0,
            "fp_per_negative": sum(r["fp_per_negative"] for r in rows) / len(rows)}


def evaluate(close: dict[str, dict], limits: np.ndarray) -> dict:
    """Per edit and pooled precision/recall of one setting of the per-signal limits."""
    per_edit = {name: pr_of(c, limits) for name, c in close.items()}
    return {"per_edit": per_edit, "pooled": pooled(list(per_edit.values())),
            "min_single_recall": min(per_edit[n]["recall"] for n in per_edit if n in SINGLE_EDITS)}


def limits_of(thresholds: dict[str, int]) -> np.ndarray:
    return np.array([thresholds.get(s, -1) for s in SIGNALS], dtype=np.int16)


# signals tuned together (one threshold each group): the plain hash and what costs no extra search on the shard
# side (mirror, frame), the eval crops, the centre hash against the eval image (re-framing) and against its centre
# (overlays), and the rotated centres
GROUPS = {"phash": ("phash", "flip", "frame"), "crop": ("crop",), "reframe": ("reframe",), "overlay": ("overlay",),
          "rotate": ("rotate",)}
# -1: the group is off; distances are nearly always even (module docstring); at most mih.MAX_RADIUS: above it the
# search is a linear scan of every eval variant, which would cost more than hashing the shards
GRID = (-1, 0, 2, 4, 6, 8)


def tune(close: dict[str, dict]) -> tuple[dict[str, int], dict]:
    """The per-signal thresholds that, on these (tuning) images, keep pooled precision >= TUNE_PRECISION and then
    maximise: every single edit's recall >= MIN_EDIT_RECALL + TUNE_EDIT_MARGIN, pooled recall, the worst single
    edit's recall, and last the smallest thresholds (fewer pairs searched). Both bounds sit above the targets, so
    that the held-out half, which only reports, meets them without luck."""
    best, best_key = None, None
    groups = list(GROUPS)
    for values in itertools.product(GRID, repeat=len(groups)):
        thresholds = {s: v for g, v in zip(groups, values) for s in GROUPS[g] if v >= 0}
        r = evaluate(close, limits_of(thresholds))
        if r["pooled"]["precision"] < TUNE_PRECISION:
            continue
        key = (r["min_single_recall"] >= MIN_EDIT_RECALL + TUNE_EDIT_MARGIN, round(r["pooled"]["recall"], 4),
               r["min_single_recall"], -sum(v for v in values if v > 0))
        if best_key is None or key > best_key:
            best, best_key = thresholds, key
    return best, evaluate(close, limits_of(best)) if best is not None else {}


def split(n: int, eval_size: int, n_pos: int, n_neg: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """(eval image indices, negative image indices, positives as positions in the eval set, the remaining image
    indices: the bench's encoder trains on these, never on an eval image or a negative)."""
    rng = random.Random(0)
    order = list(range(n))
    rng.shuffle(order)
    return (order[:eval_size], order[eval_size:eval_size + n_neg], rng.sample(range(eval_size), n_pos),
            order[eval_size + n_neg:])


def calibrate(images: list[bytes], eval_size: int, n_pos: int, n_neg: int, workers: int,
              encoder: embed.Encoder | None) -> dict:
    """Per edit, the per-signal distances of positives and negatives to the eval set; the two halves (tune: the
    first half of the positives and of the negatives, held out: the second) evaluated at the code's defaults, at
    the thresholds tuned on the first half, and for the old stage (pHash + frame-trimmed pHash at 8 bits)."""
    eval_idx, neg_idx, pos_local, _ = split(len(images), eval_size, n_pos, n_neg)
    variants = eval_variants([images[i] for i in eval_idx], workers)
    eval_features = None
    if encoder is not None:
        eval_features = embed.embed_images(encoder, ((str(i), images[i]) for i in eval_idx))[1]
    sources = np.array(pos_local)
    halves = {"tune": (slice(0, n_pos // 2), slice(0, n_neg // 2)),
              "held_out": (slice(n_pos // 2, n_pos), slice(n_neg // 2, n_neg))}
    close: dict[str, dict[str, dict]] = {h: {} for h in halves}
    cosine: dict[str, dict[str, dict]] = {h: {} for h in halves}
    # one pool for every edit: starting worker processes costs more than a small edit's work
    tasks = [(name, j, images[eval_idx[j]]) for name in EDITS for j in pos_local] + \
        [(name, n_pos + k, images[i]) for name in EDITS for k, i in enumerate(neg_idx)]
    copies: list[tuple] = []
    for batch in phash.parallel_map(_copy_batch, phash.batched(tasks, 200), workers, desc="web copies",
                                    keep_bytes=encoder is not None):
        copies += batch
    n_edit = len(EDITS) * n_pos
    for e, name in enumerate(EDITS):
        out = copies[e * n_pos:(e + 1) * n_pos] + copies[n_edit + e * n_neg:n_edit + (e + 1) * n_neg]
        d = signal_distances([o[0] for o in out], variants)
        sims = None
        if encoder is not None:
            sims = embed.embed_images(encoder, ((str(i), o[1]) for i, o in enumerate(out)))[1] @ eval_features.T
        for h, (pos, neg) in halves.items():
            close[h][name] = closeness(d[:n_pos][pos], sources[pos], d[n_pos:][neg])
            if sims is not None:
                cosine[h][name] = {k: v[:, None] for k, v in cosine_closeness(sims[:n_pos][pos], sources[pos],
                                                                            sims[n_pos:][neg]).items()}
        log.info("%s done", name)
    tuned, _ = tune(close["tune"])
    defaults = dict(dedup.DEFAULT_THRESHOLDS)
    old = {"phash": 8, "frame": 8}
    result = {"eval_size": eval_size, "positives": n_pos, "negatives": n_neg, "eval_variants": variants.shape[1],
              "tuned_thresholds": tuned, "default_thresholds": defaults,
              "halves": {h: {"defaults": evaluate(close[h], limits_of(defaults)),
                             "tuned": evaluate(close[h], limits_of(tuned)) if tuned else None,
                             "old_stage": evaluate(close[h], limits_of(old)),
                             "first_signal": {n: first_signals(c, limits_of(defaults)) for n, c in close[h].items()},
                             "false_positives": false_positives(close[h], limits_of(defaults)),
                             "signal_alone": {s: pooled([pr_of(c, limits_of({s: defaults[s]}))
                                                          for c in close[h].values()])["recall"]
                                              for s in SIGNALS if s in defaults}}
                         for h in halves},
              "eval_hashes": variants[:, 0].copy()}
    if encoder is not None:
        result["embedding"] = {h: either_curve(close[h], cosine[h], limits_of(defaults)) for h in halves}
    return result


def cosine_closeness(pos: np.ndarray, sources: np.ndarray, neg: np.ndarray) -> dict:
    """As `closeness` for cosines (higher = closer), negated so that "<= limit" means "cosine >= -limit"."""
    rows = np.arange(len(pos))
    others = pos.copy()
    others[rows, sources] = -np.inf
    return {"source": -pos[rows, sources], "other": -others.max(axis=1), "negative": -neg.max(axis=1)}


def either_curve(close: dict[str, dict], cosine: dict[str, dict], limits: np.ndarray) -> list[dict]:
    """Pooled precision/recall of "the stage's hash rule OR cosine >= t", per cosine threshold t."""
    rows = []
    for t in COSINES:
        per_edit = []
        for name, c in close.items():
            both = {k: np.concatenate([c[k].astype(np.float32) - limits.astype(np.float32),
                                       cosine[name][k] + t], axis=1) for k in ("source", "other", "negative")}
            per_edit.append(pr_of(both, np.zeros(both["source"].shape[1], dtype=np.float32)))
        rows.append({"threshold": t, **pooled(per_edit), "per_edit_recall": {n: r["recall"] for n, r in
                                                                               zip(close, per_edit)}})
    return rows


# ---- the bench's encoder -----------------------------------------------------------------------------------

def cifar_class(name: str) -> str:
    """'test/<class>/NNNN.jpg' -> the class name in words ('automobile', 'horse', ...)."""
    return name.split("/")[-2].replace("_", " ")


def train_encoder(images: list[bytes], classes: list[str], work: Path, steps: int) -> tuple[embed.Encoder, dict]:
    """The tiny CLIP (train/configs/tiny.json) trained on CPU on `images` captioned 'a photo of a {class}.'
    (CLIP's prompt), through the trainer's own command line; its image encoder and the last log record."""
    from train import train
    from demo.synthetic import write_tar
    (work / "shards").mkdir(parents=True, exist_ok=True)
    per_shard = 1000
    for s in range(0, len(images), per_shard):
        write_tar(work / "shards" / f"{s // per_shard:05d}.tar",
                  [(f"{s + i:06d}", Image.open(io.BytesIO(d)).convert("RGB"), f"a photo of a {c}.", {})
                   for i, (d, c) in enumerate(zip(images[s:s + per_shard], classes[s:s + per_shard]))], quality=95)
    train.main(["--shards", str(work / "shards"), "--config", str(ROOT / "train" / "configs" / "tiny.json"),
                "--out", str(work / "run"), "--steps", str(steps), "--warmup", str(max(1, steps // 10)),
                "--workers", "1", "--log-every", str(max(1, steps // 4))])
    log_lines = (work / "run" / "metrics.jsonl").read_text().splitlines()
    return embed.load_encoder(str(work / "run" / "ckpt_latest.pt"), "cpu"), json.loads(log_lines[-1])


# ---- speed -----------------------------------------------------------------------------------------------

def search_queries(real: np.ndarray, unrelated: np.ndarray, n: int = 2000, seed: int = 0) -> np.ndarray:
    """Half real database hashes with 0-8 random bits flipped (near copies), half hashes of unrelated images."""
    rng = np.random.default_rng(seed)
    near = real[rng.integers(0, len(real), n // 2)].copy()
    for i in range(len(near)):
        for bit in rng.choice(64, int(rng.integers(0, 9)), replace=False):
            near[i] ^= np.uint64(1) << np.uint64(bit)
    far = np.resize(unrelated, n - len(near))
    queries = np.concatenate([near, far])
    rng.shuffle(queries)
    return queries


def cpu_rate(fn, items, repeat: int = 1) -> float:
    """Items per CPU second of fn over items (this process only)."""
    start = time.process_time()
    for _ in range(repeat):
        for item in items:
            fn(item)
    return repeat * len(items) / (time.process_time() - start)


def shard_like_jpegs(n: int) -> list[bytes]:
    """n 256x256 JPEG q95 crops of the sample photos: what img2dataset writes into our shards."""
    return [jpeg(Image.open(io.BytesIO(d)).resize((256, 256), Image.Resampling.BICUBIC), 95)
            for d in photo_crops(n, size=128, seed=1)]


def full_decode_imagehash(data: bytes) -> int:
    with Image.open(io.BytesIO(data)) as image:
        return phash.phash_reference(image)


def full_decode_ours(data: bytes) -> int:
    return phash.hash_image_bytes(data, draft=False)[0]


def draft_ours(data: bytes) -> int:
    """The stage's path for a shard image: reduced decode, pHash, frame-trimmed and centre pHashes (-> the pHash)."""
    return phash.image_hashes(data, draft=True)[0][0]


def draft_plain(data: bytes) -> int:
    """The stage's decode and the plain pHash only (what the other shard-side hashes add is the difference)."""
    return phash.hash_image_bytes(data, draft=True)[0]


def draft_pil(data: bytes) -> int:
    """The stage's path with simplejpeg switched off: PIL draft mode."""
    fast, phash.simplejpeg = phash.simplejpeg, None
    try:
        return phash.image_hashes(data, draft=True)[0][0]
    finally:
        phash.simplejpeg = fast


def hash_speed(images: list[bytes]) -> dict:
    for f in (full_decode_imagehash, draft_ours):   # warm up imports (scipy.fftpack loads on first use)
        f(images[0])
    result = {"images": len(images), "image": "256x256 JPEG q95",
              "full_decode_imagehash": cpu_rate(full_decode_imagehash, images, 2),
              "full_decode_ours": cpu_rate(full_decode_ours, images, 2),
              "draft_pil": cpu_rate(draft_pil, images, 2), "draft_plain": cpu_rate(draft_plain, images, 2),
              "draft_ours": cpu_rate(draft_ours, images, 2), "simplejpeg": phash.simplejpeg is not None}
    result["draft_pil_equals_simplejpeg"] = all(draft_pil(d) == draft_ours(d) for d in images)
    full = np.array([full_decode_imagehash(d) for d in images], dtype=np.uint64)
    draft = np.array([draft_ours(d) for d in images], dtype=np.uint64)
    moved = np.bitwise_count(full ^ draft)
    result["draft_vs_full_bits"] = {int(k): int(v) for k, v in zip(*np.unique(moved, return_counts=True))}
    result["speedup"] = result["draft_ours"] / result["full_decode_imagehash"]
    return result


def search_methods(radius: int) -> dict:
    """name -> (exact by construction?, build function over uint64 hashes, search function -> (query rows, ids))."""
    def faiss_index(index, nflip=None):
        def build(db):
            if nflip is not None:
                index.nflip = nflip
            index.add(phash.to_binary_codes(db))
            return index
        return build

    def faiss_search(index, queries):
        lims, _, ids = index.range_search(phash.to_binary_codes(queries), radius + 1)
        return np.repeat(np.arange(len(queries)), np.diff(lims).astype(np.int64)), ids

    def mih_search(index, queries):
        return index.range_search(queries)[:2]

    return {
        # the stage's index (pipeline/dedup/mih.py): at 1M hashes and r=8 it plans 22+21+21 bits, 2 flips each; the
        # queries probed in chunks of mih.CHUNK at once
        **({"numpy_mih": (True, lambda db: mih.MultiIndexHash(db, radius), mih_search)}
           if radius <= mih.MAX_RADIUS else {}),
        # faiss' multi-index hashing covers 63 of 64 bits: some piece differs in <= radius // nhash bits: exact
        f"faiss_multihash_3x21_nflip{radius // 3}": (True, faiss_index(faiss.IndexBinaryMultiHash(64, 3, 21), radius // 3),
                                                     faiss_search),
        f"faiss_multihash_4x16_nflip{radius // 4}": (True, faiss_index(faiss.IndexBinaryMultiHash(64, 4, 16), radius // 4),
                                                     faiss_search),
        # one 21-bit table, nflip 2: misses matches with > 2 of their differing bits in those 21 (not exact)
        "faiss_hash_21_nflip2": (False, faiss_index(faiss.IndexBinaryHash(64, 21), 2), faiss_search),
        "faiss_flat": (True, faiss_index(faiss.IndexBinaryFlat(64)), faiss_search),
    }


SLOW_METHODS = ("faiss_multihash_4x16", "faiss_flat")   # timed on fewer queries (each takes >1 ms per query)


def search_speed(real_hashes: np.ndarray, queries: np.ndarray, threshold: int, size: int = 1_000_000) -> dict:
    """Queries per CPU second of each exact-or-not index on `size` hashes at radius `threshold`, one thread, with
    each method's recall and exactness (no pair missing, none extra) checked against numpy brute force."""
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    database = np.concatenate([real_hashes, rng.integers(0, 2**63, size - len(real_hashes), dtype=np.uint64) * 2 +
                               rng.integers(0, 2, size - len(real_hashes), dtype=np.uint64)])
    checked = queries[:300]
    start = time.process_time()
    truth = {(i, j) for i, q in enumerate(checked) for j in np.nonzero(np.bitwise_count(database ^ q) <= threshold)[0].tolist()}
    result = {"database": size, "real_in_database": len(real_hashes), "queries": len(queries), "radius": threshold,
              "numpy_brute_force": len(checked) / (time.process_time() - start), "methods": {}}
    for name, (exact_by_design, build, search) in search_methods(threshold).items():
        start = time.process_time()
        index = build(database)
        build_s = time.process_time() - start
        timed = queries[:300] if name.startswith(SLOW_METHODS) else queries
        start = time.process_time()
        rows, ids = search(index, timed)
        rate = len(timed) / (time.process_time() - start)
        found = {(i, j) for i, j in zip(rows.tolist(), ids.tolist()) if i < len(checked)}
        result["methods"][name] = {"q_per_s": rate, "build_s": build_s, "queries_timed": len(timed),
                                   "recall": len(found & truth) / max(1, len(truth)), "exact": found == truth,
                                   "exact_by_design": exact_by_design}
        del index
    return result


def stage_speed(images: list[bytes], eval_images: list[bytes], checkpoint: str | None, per_shard: int = 500) -> dict:
    """`pipeline.dedup.run` end to end in one process (`--workers 1`) on shards of the given 256 px JPEGs with every
    default signal, against `eval_images` whose hashes are already cached (an eval set is hashed once per build,
    the shards every time): samples per CPU second of this process, first run (hashing every shard) and rerun from
    the hash cache; the same with `--out-shards` (the old default: rewrite the kept samples); with a checkpoint,
    also with the embedding signal. Beside it the bare hashing rate of the same images in the same run."""
    from tests.evalfixtures import (
        write_shard,  # the tests' img2dataset-layout shard writer
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "shards").mkdir()
        for s in range(0, len(images), per_shard):
            write_shard(tmp / "shards" / f"{s // per_shard:05d}.tar",
                        [(f"{s + i:08x}", d) for i, d in enumerate(images[s:s + per_shard])])
        (tmp / "eval" / "x").mkdir(parents=True)
        for i, d in enumerate(eval_images):
            (tmp / "eval" / "x" / f"{i:05d}.jpg").write_bytes(d)
        cache = tmp / "cache"

        def timed(out: str, *extra: str, shards: str = str(tmp / "shards")) -> tuple[dict, float]:
            start = time.process_time()
            manifest = dedup.run(["--shards", shards, "--eval", f"e={tmp / 'eval'}", "--out", str(tmp / out),
                                  "--workers", "1", *extra])
            return manifest, time.process_time() - start

        # the eval side first (not timed): hashed once, then served from the cache as in a build's later runs
        start = time.process_time()
        phash.eval_hashes(dedup.open_eval_sets([f"e={tmp / 'eval'}"], [])[0], str(tmp / "first" / "cache"), 1)
        eval_s = time.process_time() - start
        for name in ("one", "rewrite"):
            shutil.copytree(tmp / "first" / "cache" / "eval", tmp / name / "cache" / "eval")
        # the same run on the first shard only: what does not grow with the shards (loading the eval hashes,
        # building the index, starting up) is the difference's intercept, the marginal cost per sample its slope
        one, once = timed("one", shards=str(tmp / "shards" / "00000.tar"))
        manifest, cold = timed("first")
        _, warm = timed("first")
        _, rewrite = timed("rewrite", "--out-shards", str(tmp / "clean"))
        n, n_one = manifest["counters"]["read"], one["counters"]["read"]
        start = time.process_time()
        for d in images:
            phash.image_hashes(d)
        bare = time.process_time() - start
        result = {"samples": n, "eval_images": len(eval_images), "eval_variants_per_s": len(eval_images) / eval_s,
                  "index_rows": len(eval_images) * len(phash.VARIANT_KINDS), "dropped": manifest["counters"]["rejected"],
                  "samples_per_cpu_s": n / cold, "rerun_samples_per_cpu_s": n / warm,
                  "marginal_samples_per_cpu_s": (n - n_one) / (cold - once), "fixed_cpu_s": once - n_one * (cold - once) / (n - n_one),
                  "rewrite_samples_per_cpu_s": n / rewrite, "bare_hashing_per_cpu_s": len(images) / bare,
                  "thresholds": manifest["settings"]["thresholds"]}
        if checkpoint:
            _, t = timed("first", "--embed-checkpoint", checkpoint, "--embed-device", "cpu")
            result["embedding_samples_per_cpu_s"] = n / t
    return result


def method_cell(name: str, m: dict, queries: int) -> str:
    notes = [f"recall {m['recall']:.3f}"] + ([] if m["exact"] else ["not exact"]) + (
        [f"timed on {m['queries_timed']} queries"] if m["queries_timed"] != queries else [])
    return f"{name}: {m['q_per_s']:,.0f} q/s ({', '.join(notes)})"


def pr_cell(r: dict) -> str:
    return f"{r['precision']:.3f} / {r['recall']:.3f}"


def verdict(r: dict) -> str:
    ok = (r["pooled"]["precision"] >= MIN_PRECISION, r["pooled"]["recall"] >= MIN_RECALL,
          r["min_single_recall"] >= MIN_EDIT_RECALL)
    return "met" if all(ok) else "NOT met (" + ", ".join(
        n for n, good in zip(("precision", "recall", "worst single edit"), ok) if not good) + ")"


def markdown(r: dict) -> str:
    cal, hs, st = r["calibration"], r["hash_speed"], r["stage"]
    tune, held = cal["halves"]["tune"], cal["halves"]["held_out"]
    d_t, d_h = tune["defaults"], held["defaults"]
    worst = min((n for n in SINGLE_EDITS), key=lambda n: d_h["per_edit"][n]["recall"])
    fmt = lambda t: ", ".join(f"{k} {v}" for k, v in t.items())   # noqa: E731
    lines = [
        "## Stage 5: dedup (near-duplicates of eval images under web edits)", "",
        (f"Machine: {machine_line(r['machine'])}. Command: `python -m bench.bench_dedup {r['args']}`. "
         f"Images: {r['images']}. Wall time {r['wall_s']:.0f} s."), "",
        (f"Calibration: {cal['eval_size']:,} real images are the eval set, each hashed as {cal['eval_variants']} "
         f"variants (`phash.variant_hashes`); per edit, {cal['positives']:,} of them edited (positives: must meet "
         f"their source) and {cal['negatives']:,} other images of the same classes edited the same way (negatives: "
         "must meet nothing). Edits work on the picture enlarged to 256 px (bicubic), as a web page or img2dataset "
         "shows a 32 px CIFAR image, and the copy is saved as JPEG (q90 unless the edit names a quality); "
         "recompress_q20 keeps 32 px. The first half of the positives and negatives tunes the thresholds, the second "
         "(held out) only reports. Precision = TP / (TP + FP) at a 50% duplicate rate (TP: a positive meeting its "
         "source; FP: a negative meeting any eval image, or a positive meeting only others)."), "",
        (f"**At the code's defaults ({fmt(cal['default_thresholds'])} bits), held-out half: pooled precision "
         f"{d_h['pooled']['precision']:.4f} ({d_h['pooled']['fp']} false positives), recall "
         f"{d_h['pooled']['recall']:.3f}, worst single edit {worst} "
         f"{d_h['per_edit'][worst]['recall']:.3f}: target (precision >= {MIN_PRECISION}, recall >= {MIN_RECALL}, "
         f"every single edit >= {MIN_EDIT_RECALL}) {verdict(d_h)}.** Tuning half: "
         f"{pr_cell(d_t['pooled'])}, worst single edit {d_t['min_single_recall']:.3f} ({verdict(d_t)}). "
         f"Thresholds tuned on the tuning half by `tune` ({fmt(cal['tuned_thresholds'] or {})}): held-out "
         f"{pr_cell(held['tuned']['pooled'])} (worst single edit {held['tuned']['min_single_recall']:.3f})."
         if held["tuned"] else "No thresholds keep the tuning half's precision >= 0.99."), "",
        "Precision / recall per edit at the code's defaults, both halves; the old stage (pHash + frame-trimmed pHash "
        "at 8 bits) on the held-out half; which signal found the held-out positives (the first of "
        f"{', '.join(SIGNALS)}):", "",
        "| edit | tuning half | held-out half | old stage, held out | found by (held out) |", "|---|---:|---:|---:|---|"]
    for name in EDITS:
        found = ", ".join(f"{k} {v}" for k, v in sorted(held["first_signal"][name].items(), key=lambda kv: -kv[1]))
        lines.append(f"| {name} | {pr_cell(d_t['per_edit'][name])} | {pr_cell(d_h['per_edit'][name])} | "
                     f"{pr_cell(held['old_stage']['per_edit'][name])} | {found} |")
    lines.append(f"| **pooled** | {pr_cell(d_t['pooled'])} | {pr_cell(d_h['pooled'])} | "
                 f"{pr_cell(held['old_stage']['pooled'])} | |")
    fps = held["false_positives"]
    lines += ["", "Each signal alone at its default threshold, pooled recall (held out): " +
              ", ".join(f"{k} {v:.3f}" for k, v in held["signal_alone"].items()) + ".", "",
              (f"The held-out false positives at the defaults, by the signal that found them: "
               f"{', '.join(f'{k} {v}' for k, v in fps['by_signal'].items())}. The {fps['negative_fps']} from negatives "
               f"come from {fps['negatives']} distinct negative images, {fps['from_top_6_negatives']} of them from six "
               "(a negative that meets an eval image under one mild edit meets it under most of the 22).")]
    if "embedding" in cal:
        enc = r["encoder"]
        lines += ["", (f"**Embedding signal (`--embed-checkpoint`)**, encoder: {enc['description']}"
                       + (f", trained here on {enc['train_images']:,} CIFAR-10 test images that are neither eval images "
                          f"nor negatives, {enc['steps']} CPU steps" if "steps" in enc else "")
                       + ". The hash signals at their defaults OR cosine >= t, pooled (held-out half):"), "",
                  "| cosine t | precision / recall | worst single edit |", "|---:|---:|---:|"]
        for row in cal["embedding"]["held_out"]:
            if row["threshold"] in SHOWN_COSINES:
                w = min(row["per_edit_recall"][n] for n in SINGLE_EDITS)
                lines.append(f"| {row['threshold']:g} | {pr_cell(row)} | {w:.3f} |")
    lines += ["", "Speed per core (CPU seconds of one process; faiss on one thread), each beside its reference:", "",
              "| what | reference | measured | target |", "|---|---:|---:|---:|"]
    lines.append(f"| shard-side hashes, {hs['image']} | full decode + imagehash: {hs['full_decode_imagehash']:,.0f} img/s | "
                 f"the stage's path (simplejpeg scaled grey decode + pHash, frame-trimmed and centre hashes): "
                 f"{hs['draft_ours']:,.0f} img/s ({hs['speedup']:.1f}x); pHash only: {hs['draft_plain']:,.0f}; "
                 f"PIL draft mode instead of simplejpeg: {hs['draft_pil']:,.0f}; full decode + matrix DCT: "
                 f"{hs['full_decode_ours']:,.0f} | >= {HASH_TARGET:,} img/s |")
    for ss in r["search_speed"].values():
        cells = "; ".join(method_cell(name, m, ss["queries"]) for name, m in ss["methods"].items())
        lines.append(f"| range search r<={ss['radius']}, {ss['database']:,} hashes | numpy brute force: "
                     f"{ss['numpy_brute_force']:,.0f} q/s | {cells} | >= {SEARCH_TARGET:,} q/s, exact |")
    embed_cell = (f"; {st['embedding_samples_per_cpu_s']:,.0f} samples/s with the embedding signal (tiny encoder on "
                  "CPU)") if "embedding_samples_per_cpu_s" in st else ""
    lines.append(f"| **dedup end to end** (`dedup.run`, 1 process, {st['samples']:,} 256 px JPEGs in shards of 500, "
                 f"every default signal, eval index of {st['eval_images']:,} images = {st['index_rows']:,} hashes, their "
                 f"hashes cached) | bare shard-side hashing of the same images: {st['bare_hashing_per_cpu_s']:,.0f} img/s | "
                 f"**{st['marginal_samples_per_cpu_s']:,.0f} samples/s per additional sample** "
                 f"({st['marginal_samples_per_cpu_s'] / st['bare_hashing_per_cpu_s']:.2f}x bare hashing) plus "
                 f"{st['fixed_cpu_s']:.1f} CPU s once per run (eval hashes loaded, index built); all {st['samples']:,} "
                 f"samples in {st['samples']/st['samples_per_cpu_s']:.2f} s = {st['samples_per_cpu_s']:,.0f} samples/s; rerun "
                 f"from the hash cache {st['rerun_samples_per_cpu_s']:,.0f}; with `--out-shards` (rewriting the kept "
                 f"samples, the old default) {st['rewrite_samples_per_cpu_s']:,.0f}{embed_cell} | "
                 f">= {STAGE_TARGET:,} samples/s |")
    mih_build = max(ss["methods"]["numpy_mih"]["build_s"] for ss in r["search_speed"].values()
                    if "numpy_mih" in ss["methods"])
    lines += [
        "",
        (f"Eval side: {st['eval_variants_per_s']:,.0f} images/s hashed into their {cal['eval_variants']} variants (once "
         f"per eval set, cached). Draft decode vs full decode, bits of difference per image: {hs['draft_vs_full_bits']} "
         f"(both sides use the draft path; simplejpeg and PIL draft mode give identical hashes: "
         f"{hs['draft_pil_equals_simplejpeg']}). Search: recall and exactness checked against brute force on the first "
         f"300 queries; the stage uses `numpy_mih` (pipeline/dedup/mih.py; build over 1M hashes {mih_build:.2f} s)."),
        "",
        ("pHash distances are (nearly) always even: a pHash has 32 bits set unless DCT coefficients tie with the "
         "median. Some negatives' matches are real: among the 30 closest pairs inside the CIFAR-10 test set about 19 "
         "are the same photo (cf. Barz & Denzler 2020), so the precision above is a lower bound.")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="../shared/data (CIFAR-10 test JPEGs); default: sample photo crops")
    p.add_argument("--eval-size", type=int, default=5000)
    p.add_argument("--positives", type=int, default=1000)
    p.add_argument("--negatives", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2, help="processes for the calibration hashing (not the speed runs)")
    p.add_argument("--encoder-steps", type=int, default=0,
                   help="train the bench's encoder for this many steps and calibrate the embedding signal (default 0: "
                        f"off; {ENCODER_STEPS} is ~3 epochs of the leftover CIFAR-10 images)")
    p.add_argument("--embed-checkpoint", help="calibrate the embedding signal of this train/train.py checkpoint "
                                              "instead of training one here (it must not have seen the eval images)")
    args = p.parse_args(argv)
    setup_logging()
    started = time.time()
    if args.data:
        names, images = cifar_images(args.data)
        source = "CIFAR-10 test (32x32 JPEG)"
    else:
        images, source = photo_crops(args.eval_size + args.negatives + 2000, seed=0), "64x64 crops of data/sample/photos"
        names = [f"photo/crop/{i}.jpg" for i in range(len(images))]   # one class: the photos have no labels
    eval_size = min(args.eval_size, len(images) - args.negatives)
    with tempfile.TemporaryDirectory() as tmp:
        encoder, enc_info = None, None
        train_idx = split(len(images), eval_size, 1, args.negatives)[3]
        if args.embed_checkpoint:
            encoder = embed.load_encoder(args.embed_checkpoint, "cpu")
            enc_info = {"description": f"the checkpoint {args.embed_checkpoint}", "checkpoint_sha256": encoder.sha256}
        elif args.encoder_steps and train_idx:
            t0 = time.time()
            encoder, last = train_encoder([images[i] for i in train_idx], [cifar_class(names[i]) for i in train_idx],
                                          Path(tmp), args.encoder_steps)
            enc_info = {"description": ENCODER_DESCRIPTION, "train_images": len(train_idx), "steps": args.encoder_steps,
                        "batch_size": 64, "train_s": time.time() - t0, "last_loss": last["loss"],
                        "checkpoint_sha256": encoder.sha256}
            log.info("encoder trained at %.0f s", time.time() - started)
        cal = calibrate(images, eval_size, min(args.positives, eval_size), args.negatives, args.workers, encoder)
        log.info("calibration done at %.0f s", time.time() - started)
        shard_like = shard_like_jpegs(300)
        hs = hash_speed(shard_like)
        radius = max(dedup.DEFAULT_THRESHOLDS.values())
        queries = search_queries(cal["eval_hashes"], hash_items(shard_like, 1))
        ss = {f"r{radius}_1M": search_speed(cal["eval_hashes"], queries, radius)}
        log.info("search speed done at %.0f s", time.time() - started)
        st = stage_speed(shard_like * 8, images[:eval_size], encoder.path if encoder else None)
    r = {"machine": machine(), "args": " ".join(argv or []) if argv else "", "images": source,
         "calibration": {k: v for k, v in cal.items() if k != "eval_hashes"}, "encoder": enc_info, "hash_speed": hs,
         "search_speed": ss, "stage": st, "wall_s": time.time() - started}
    save_results("dedup", r)
    update_section("dedup", markdown(r))
    print(markdown(r))
    return r


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
