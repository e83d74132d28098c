"""Benchmark and calibration of stage 5 (`dedup`): precision/recall of its signals, hashes/s and searches/s per core.

Calibration: `--eval-size` real images are the eval set (indexed); `--positives` of them are transformed the
way the web copies images (TRANSFORMS below) and must match their source; `--negatives` other real images
of the same kind, transformed the same way, must match nothing. Per transform and threshold: precision =
TP / (TP + FP), recall = TP / positives, where TP = a positive matching its source, FP = a negative matching
any eval image or a positive matching only other eval images. Positives and negatives are 1:1, so precision
is for a 50% duplicate rate; the false-positive rate per negative is printed too (web data has far fewer
duplicates, so multiply it by the number of training images to get the expected wrongly dropped samples).
The default threshold is the one with the best recall on the resize+recompress transforms at precision >= 0.99.
Three signals are measured: pHash alone, the stage's pHash (plain or frame-trimmed, `phash.trimmed_phash`),
and the cosine of an encoder of ours (`--embed-checkpoint`), alone and OR-ed with the stage's pHash at its
chosen threshold; the default cosine threshold is chosen by the same rule on the OR (what the stage drops).
The encoder is the tiny CLIP config trained here, through `train.train`, on the images left over (neither
eval images nor negatives) captioned "a photo of a {class}." (`--encoder-steps 0` skips it).

Real images: the CIFAR-10 test JPEGs in `--data` (../shared/data/cifar10-test-jpg.tar.gz: 32x32, the
classes look alike, so the negatives are hard); without `--data`, 64x64 crops of the sample photos in
data/sample/photos (fewer distinct scenes: overlapping crops make harder negatives still).

Speed, per core (CPU seconds of this single process; faiss limited to one thread), each next to its reference
measured in the same run:
  - hashing 256x256 JPEGs (shard-like): full decode + imagehash.phash (reference) vs the stage's path
    (draft decode + the matrix-DCT pHash), and how many bits the draft path moves a hash;
  - Hamming range search of real query hashes in a 1M database (real + random hashes): numpy brute force
    (reference) vs the stage's numpy multi-index hashing vs faiss IndexBinaryMultiHash (3x21, 4x16),
    IndexBinaryHash and IndexBinaryFlat, each with recall and exactness checked against brute force;
  - the stage end to end (`pipeline.dedup.run`, one process) on shards of 256 px JPEGs, also with the embedding.

Run: make bench DATA=../shared/data   or   python -m bench.bench_dedup [--data ../shared/data]  (~3 minutes here)
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import random
import tarfile
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from bench.report import machine, machine_line, save_results, update_section
from pipeline.dedup import embed, mih, phash
from pipeline.dedup import stage as dedup
from pipeline.common.logs import setup_logging

log = logging.getLogger("bench.bench_dedup")

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "data" / "sample" / "photos"
THRESHOLDS = list(range(17))
RESIZE_RECOMPRESS = ("resize_up_q40", "resize_down_up_q50")   # the transforms the default is chosen on
MIN_PRECISION = 0.99                                          # the bar for the default threshold
HASH_TARGET, SEARCH_TARGET = 2_000, 5_000                     # DESIGN.md: img/s and queries/s per core
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


# ---- web-style transforms (PIL image -> encoded bytes) -----------------------------------------------------

def upscale(image: Image.Image, side: int = 256) -> Image.Image:
    return image.resize((side, side * image.height // image.width), Image.Resampling.BICUBIC)


def resize_up_q40(im):        # a thumbnail blown up for a web page, saved at low quality
    return jpeg(upscale(im), 40)


def resize_down_up_q50(im):   # shrunk (a thumbnail of a thumbnail), then enlarged and recompressed
    small = im.resize((max(8, im.width * 3 // 4), max(8, im.height * 3 // 4)), Image.Resampling.BILINEAR)
    return jpeg(upscale(small), 50)


def recompress_q20(im):       # same size, heavy JPEG
    return jpeg(im, 20)


def upscale_q95(im):          # what img2dataset stores for an enlarged copy (resize to 256, q95)
    return jpeg(upscale(im), 95)


def crop_6pct(im):            # 3% cut from every side
    dx, dy = max(1, im.width * 3 // 100), max(1, im.height * 3 // 100)
    return jpeg(upscale(im.crop((dx, dy, im.width - dx, im.height - dy))), 90)


def border_10pct(im):         # a white frame of 10% of the side
    pad = max(1, im.width // 10)
    framed = Image.new("RGB", (im.width + 2 * pad, im.height + 2 * pad), "white")
    framed.paste(im, (pad, pad))
    return jpeg(upscale(framed), 90)


def colour_shift(im):         # +15% brightness, -15% saturation
    return jpeg(upscale(ImageEnhance.Color(ImageEnhance.Brightness(im).enhance(1.15)).enhance(0.85)), 90)


def text_overlay(im):         # a watermark line across the bottom
    big = upscale(im)
    draw = ImageDraw.Draw(big)
    draw.rectangle((0, big.height - 28, big.width, big.height), fill="black")
    draw.text((6, big.height - 24), "www.example.com/photo", fill="white", font_size=18)
    return jpeg(big, 90)


TRANSFORMS = {f.__name__: f for f in (resize_up_q40, resize_down_up_q50, recompress_q20, upscale_q95, crop_6pct,
                                      border_10pct, colour_shift, text_overlay)}


def transform_and_hash(task: tuple[str, bytes]) -> tuple[int, int | None, bytes]:
    """Worker task: apply the named transform to an image; its pHash, frame-trimmed pHash and encoded bytes."""
    name, data = task
    copy = TRANSFORMS[name](Image.open(io.BytesIO(data)).convert("RGB"))
    plain, trimmed, _ = phash.image_hashes(copy)
    return plain, trimmed, copy


def hash_items(images: list[bytes], workers: int) -> np.ndarray:
    out = []
    for hashes in phash.parallel_map(_hash_batch, phash.batched(images, 500), workers, desc="hash"):
        out += hashes
    return np.array(out, dtype=np.uint64)


def _hash_batch(batch: list[bytes]) -> list[int]:
    return [phash.hash_image_bytes(d)[0] for d in batch]


def _transform_batch(batch: list[tuple[str, bytes]]) -> list[tuple[int, int | None, bytes]]:
    return [transform_and_hash(t) for t in batch]


# ---- calibration -----------------------------------------------------------------------------------------

def distances(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """(len(queries), len(database)) Hamming distances of uint64 hashes (numpy brute force)."""
    return np.bitwise_count(queries[:, None] ^ database[None, :]).astype(np.int16)


def stage_distances(plain: np.ndarray, trimmed: list[int | None], database: np.ndarray) -> np.ndarray:
    """Distances as the stage measures them: the smaller of the plain and the frame-trimmed hash's, if any."""
    d = distances(plain, database)
    framed = [i for i, t in enumerate(trimmed) if t is not None]
    if framed:
        d[framed] = np.minimum(d[framed], distances(np.array([trimmed[i] for i in framed], dtype=np.uint64), database))
    return d


def closeness(pos: np.ndarray, pos_source: np.ndarray, neg: np.ndarray) -> dict:
    """Per positive its score to its source and its best score to any other eval image; per negative its best
    score to any eval image. Scores grow with similarity (pass -distance for hashes, cosine for embeddings)."""
    rows = np.arange(len(pos))
    others = pos.astype(np.float32)
    others[rows, pos_source] = -np.inf
    return {"source": pos[rows, pos_source].astype(np.float32), "other": others.max(axis=1),
            "negative": neg.max(axis=1).astype(np.float32)}


def pr_row(hit_source: np.ndarray, hit_other: np.ndarray, hit_negative: np.ndarray, **label) -> dict:
    """TP = a positive matching its source; FP = a negative matching anything, or a positive matching only others."""
    tp = int(hit_source.sum())
    fp = int(hit_negative.sum() + (~hit_source & hit_other).sum())
    return {**label, "tp": tp, "fp": fp, "recall": tp / len(hit_source), "precision": tp / (tp + fp) if tp + fp else 1.0,
            "fp_per_negative": float(hit_negative.mean())}


def hash_curve(c: dict) -> list[dict]:
    """Precision/recall per Hamming threshold (match: distance <= t)."""
    return [pr_row(c["source"] >= -t, c["other"] >= -t, c["negative"] >= -t, threshold=t) for t in THRESHOLDS]


def cosine_curve(c: dict) -> list[dict]:
    """Precision/recall per cosine threshold (match: cosine >= t)."""
    return [pr_row(c["source"] >= t, c["other"] >= t, c["negative"] >= t, threshold=t) for t in COSINES]


def either_curve(h: dict, bits: int, c: dict) -> list[dict]:
    """Precision/recall of "pHash within `bits` OR cosine >= t", per cosine threshold t: what the stage drops."""
    return [pr_row((h["source"] >= -bits) | (c["source"] >= t), (h["other"] >= -bits) | (c["other"] >= t),
                   (h["negative"] >= -bits) | (c["negative"] >= t), threshold=t) for t in COSINES]


def calibrate(images: list[bytes], eval_size: int, n_pos: int, n_neg: int, workers: int,
              encoder: embed.Encoder | None) -> dict:
    """Per transform, the closeness of positives and negatives to the eval set: by pHash alone, by the stage's
    pHash (plain or frame-trimmed), and by the encoder's cosine; then the curves and the chosen thresholds."""
    eval_idx, neg_idx, pos_local, _ = split(len(images), eval_size, n_pos, n_neg)
    eval_hashes = hash_items([images[i] for i in eval_idx], workers)
    eval_features = None
    if encoder is not None:
        eval_features = embed.embed_images(encoder, ((str(i), images[i]) for i in eval_idx))[1]
    sources = np.array(pos_local)
    close = {"phash": {}, "stage": {}, "cosine": {}}
    for name in TRANSFORMS:
        tasks = [(name, images[eval_idx[j]]) for j in pos_local] + [(name, images[i]) for i in neg_idx]
        out = []
        for batch in phash.parallel_map(_transform_batch, phash.batched(tasks, 250), workers, desc=name):
            out += batch
        plain = np.array([o[0] for o in out], dtype=np.uint64)
        trimmed = [o[1] for o in out]
        d = distances(plain, eval_hashes)
        close["phash"][name] = closeness(-d[:n_pos], sources, -d[n_pos:])
        d = stage_distances(plain, trimmed, eval_hashes)
        close["stage"][name] = closeness(-d[:n_pos], sources, -d[n_pos:])
        close["stage"][name]["framed"] = (sum(t is not None for t in trimmed[:n_pos]), sum(t is not None for t in trimmed[n_pos:]))
        if encoder is not None:
            sims = embed.embed_images(encoder, ((str(i), o[2]) for i, o in enumerate(out)))[1] @ eval_features.T
            close["cosine"][name] = closeness(sims[:n_pos], sources, sims[n_pos:])
    result = {"eval_size": eval_size, "positives": n_pos, "negatives": n_neg, "eval_hashes": eval_hashes,
              "framed": {n: c.pop("framed") for n, c in close["stage"].items()}}
    result["phash_only"] = curves(close["phash"], hash_curve)        # without the border hash, for comparison
    result.update(curves(close["stage"], hash_curve))
    best = choose_threshold(result["resize_recompress"], result["all_transforms"], prefer_high=False)
    result["chosen"], result["chosen_threshold"] = best, best["threshold"] if best else None
    if encoder is not None:
        bits = result["chosen_threshold"] if best else dedup.DEFAULT_THRESHOLD
        result["embedding"] = curves(close["cosine"], cosine_curve)
        result["either"] = curves({n: (close["stage"][n], close["cosine"][n]) for n in TRANSFORMS},
                                  lambda hc: either_curve(hc[0], bits, hc[1]))
        best = choose_threshold(result["either"]["resize_recompress"], result["either"]["all_transforms"],
                                prefer_high=True)
        result["either"]["chosen"], result["either"]["chosen_threshold"] = best, best["threshold"] if best else None
        result["either"]["bits"] = bits
    return result


def split(n: int, eval_size: int, n_pos: int, n_neg: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """(eval image indices, negative image indices, positives as positions in the eval set, the remaining image
    indices: the bench's encoder trains on these, never on an eval image or a negative)."""
    rng = random.Random(0)
    order = list(range(n))
    rng.shuffle(order)
    return (order[:eval_size], order[eval_size:eval_size + n_neg], rng.sample(range(eval_size), n_pos),
            order[eval_size + n_neg:])


def curves(per_transform_input: dict, make_curve) -> dict:
    per_transform = {name: make_curve(x) for name, x in per_transform_input.items()}
    return {"per_transform": per_transform, "resize_recompress": pool_curves([per_transform[n] for n in RESIZE_RECOMPRESS]),
            "all_transforms": pool_curves(list(per_transform.values()))}


def choose_threshold(resize_recompress: list[dict], everything: list[dict], prefer_high: bool) -> dict | None:
    """The best recall on resize+recompress at precision >= MIN_PRECISION; among equal recalls, the threshold
    with the best recall on all transforms whose precision there also stays >= MIN_PRECISION (more edited
    copies caught at no cost below the bar), then the strictest (the smallest distance, the highest cosine)."""
    ok = [(rr, allt) for rr, allt in zip(resize_recompress, everything) if rr["precision"] >= MIN_PRECISION]
    if not ok:
        return None
    best_rr = max(rr["recall"] for rr, _ in ok)
    tied = [(rr, allt) for rr, allt in ok if rr["recall"] == best_rr]
    return max(tied, key=lambda p: (p[1]["precision"] >= MIN_PRECISION, p[1]["recall"] if p[1]["precision"] >= MIN_PRECISION
                                    else 0, p[0]["threshold"] if prefer_high else -p[0]["threshold"]))[0]


def pool_curves(curves: list[list[dict]]) -> list[dict]:
    """Curves of several transforms with the same number of positives each, pooled."""
    out = []
    for rows in zip(*curves):
        tp, fp = sum(r["tp"] for r in rows), sum(r["fp"] for r in rows)
        out.append({"threshold": rows[0]["threshold"], "tp": tp, "fp": fp, "precision": tp / (tp + fp) if tp + fp else 1.0,
                    "recall": sum(r["recall"] for r in rows) / len(rows),
                    "fp_per_negative": sum(r["fp_per_negative"] for r in rows) / len(rows)})
    return out


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
    """The stage's path for a shard image: reduced decode, pHash and the frame-trimmed pHash."""
    return phash.image_hashes(data, draft=True)[0]


def draft_plain(data: bytes) -> int:
    """The stage's decode and pHash without the frame check (what the frame-trimmed hash adds is the difference)."""
    return phash.hash_image_bytes(data, draft=True)[0]


def draft_pil(data: bytes) -> int:
    """The stage's path with simplejpeg switched off: PIL draft mode."""
    fast, phash.simplejpeg = phash.simplejpeg, None
    try:
        return phash.image_hashes(data, draft=True)[0]
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
        # the stage's index (pipeline/dedup/mih.py): 21+21+22 bits, all queries probed at once
        **({"numpy_mih_21_21_22": (True, lambda db: mih.MultiIndexHash(db, radius), mih_search)}
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
    """`pipeline.dedup.run` end to end in one process on shards of the given images; samples per CPU second (of
    this process: torch's intra-op threads count too). With a checkpoint, a third run adds the embedding signal
    (hashes from the cache, embeddings computed)."""
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
        args = ["--shards", str(tmp / "shards"), "--eval", f"e={tmp / 'eval'}", "--out", str(tmp / "out"),
                "--out-shards", str(tmp / "clean"), "--workers", "1"]
        start = time.process_time()
        manifest = dedup.run(args)
        cold = time.process_time() - start
        start = time.process_time()
        dedup.run(args)
        warm = time.process_time() - start
        n = manifest["counters"]["read"]
        result = {"samples": n, "dropped": manifest["counters"]["rejected"], "samples_per_cpu_s": n / cold,
                  "rerun_samples_per_cpu_s": n / warm}
        if checkpoint:
            start = time.process_time()
            dedup.run(args + ["--embed-checkpoint", checkpoint, "--embed-device", "cpu"])
            result["embedding_samples_per_cpu_s"] = n / (time.process_time() - start)
    return result


# ---- report ----------------------------------------------------------------------------------------------

def pr_table(curves_by_name: dict[str, list[dict]], shown: list, fmt: str) -> list[str]:
    lines = ["| transform | " + " | ".join(f"t={fmt.format(t)}" for t in shown) + " |", "|---|" + "---:|" * len(shown)]
    for name, rows in curves_by_name.items():
        by_t = {r["threshold"]: r for r in rows}
        lines.append(f"| {name} | " + " | ".join(f"{by_t[t]['precision']:.3f} / {by_t[t]['recall']:.3f}" for t in shown) + " |")
    return lines


def method_cell(name: str, m: dict, queries: int) -> str:
    notes = [f"recall {m['recall']:.3f}"] + ([] if m["exact"] else ["not exact"]) + (
        [f"timed on {m['queries_timed']} queries"] if m["queries_timed"] != queries else [])
    return f"{name}: {m['q_per_s']:,.0f} q/s ({', '.join(notes)})"


def markdown(r: dict) -> str:
    cal, hs, st = r["calibration"], r["hash_speed"], r["stage"]
    c, t = cal["chosen"], cal["chosen_threshold"]
    lines = [
        "## Stage 5: dedup (near-duplicates of eval images: pHash, frame-trimmed pHash, optional embedding)", "",
        (f"Machine: {machine_line(r['machine'])}. Command: `python -m bench.bench_dedup {r['args']}`. "
         f"Images: {r['images']}. Wall time {r['wall_s']:.0f} s."), "",
        (f"**pHash threshold chosen: {t} bits** (best recall on resize+recompress at precision >= "
         f"{MIN_PRECISION}): precision {c['precision']:.3f}, recall {c['recall']:.3f}, false positives per negative "
         f"{c['fp_per_negative']:.4f}. Eval set {cal['eval_size']} images; per transform {cal['positives']} positives "
         f"(transformed eval images) and {cal['negatives']} negatives (other images, same transform). The stage's "
         "pHash signal: a shard image matches when its pHash, or the pHash inside its uniform frame (if it has one), "
         "is within the threshold."), "",
        "Precision / recall per transform and threshold (the stage's pHash signal):", ""]
    shown = r["shown_thresholds"]
    lines += pr_table(dict(cal["per_transform"], resize_recompress_pooled=cal["resize_recompress"],
                           all_pooled=cal["all_transforms"]), shown, "{}")
    plain = {n: {x["threshold"]: x for x in rows} for n, rows in cal["phash_only"]["per_transform"].items()}
    trimmed = {n: {x["threshold"]: x for x in rows} for n, rows in cal["per_transform"].items()}
    lines += ["", (f"Effect of the frame-trimmed hash (rows and columns within {phash.BORDER_TOL} grey levels of the "
                   "outer ring's colour peeled from at least two sides, plus one; see `phash.uniform_border_box`), "
                   f"precision / recall at t={t} without -> with it, and how many positives / negatives had a frame "
                   "found:"), "", "| transform | pHash only | + frame-trimmed hash | framed pos / neg |", "|---|---:|---:|---:|"]
    for n in plain:
        a, b = plain[n][t], trimmed[n][t]
        lines.append(f"| {n} | {a['precision']:.3f} / {a['recall']:.3f} | {b['precision']:.3f} / {b['recall']:.3f} | "
                     f"{cal['framed'][n][0]} / {cal['framed'][n][1]} |")
    pooled_plain = {x["threshold"]: x for x in cal["phash_only"]["resize_recompress"]}[t]
    lines.append(f"| resize_recompress_pooled | {pooled_plain['precision']:.3f} / {pooled_plain['recall']:.3f} | "
                 f"{c['precision']:.3f} / {c['recall']:.3f} | |")
    if "embedding" in cal:
        e, ei = cal["embedding"], cal["either"]
        enc, ch = r["encoder"], ei["chosen"]
        trained = (f"; trained here on {enc['train_images']:,} CIFAR-10 test images that are neither eval images nor "
                   f"negatives, {enc['steps']} steps of {enc['batch_size']} on CPU in {enc['train_s']:.0f} s (last loss "
                   f"{enc['last_loss']:.3f})") if "steps" in enc else ""
        lines += ["", (f"**Embedding signal (`--embed-checkpoint`).** Encoder: {enc['description']}{trained}. Features: "
                       "the checkpoint's image tower with zero-shot eval preprocessing, L2-normalised; match: cosine >= "
                       "t, exact search (faiss IndexFlatIP)."), "",
                  "Embedding alone, precision / recall per transform and cosine threshold:", ""]
        lines += pr_table(dict(e["per_transform"], resize_recompress_pooled=e["resize_recompress"],
                               all_pooled=e["all_transforms"]), r["shown_cosines"], "{:g}")
        lines += ["", f"pHash (t={ei['bits']}, with the frame-trimmed hash) OR embedding, per cosine threshold:", ""]
        lines += pr_table(dict(ei["per_transform"], resize_recompress_pooled=ei["resize_recompress"],
                               all_pooled=ei["all_transforms"]), r["shown_cosines"], "{:g}")
        if ch:
            pooled = next(x for x in ei["all_transforms"] if x["threshold"] == ei["chosen_threshold"])
            verdict = (f"**Cosine threshold chosen: {ei['chosen_threshold']}** (the same rule, applied to pHash OR "
                       f"embedding: resize+recompress precision {ch['precision']:.3f} / recall {ch['recall']:.3f}; all "
                       f"transforms {pooled['precision']:.3f} / {pooled['recall']:.3f}).")
        else:
            verdict = "**No cosine threshold keeps precision >= 0.99 on resize+recompress** for pHash OR this encoder."
        lines += ["", verdict + (" The code's default (`pipeline.dedup.DEFAULT_EMBED_THRESHOLD`) is "
                                 f"{r['default_embed_threshold_in_code']}.")]
    lines += ["", "Speed per core (CPU seconds of one process; faiss on one thread), each beside its reference:", "",
              "| what | reference | measured | target |", "|---|---:|---:|---:|"]
    lines.append(f"| pHash, {hs['image']} | full decode + imagehash: {hs['full_decode_imagehash']:,.0f} img/s | "
                 f"the stage's path (simplejpeg scaled grey decode + matrix-DCT pHash + frame check): "
                 f"{hs['draft_ours']:,.0f} img/s ({hs['speedup']:.1f}x); without the frame check: {hs['draft_plain']:,.0f}; "
                 f"PIL draft mode instead of simplejpeg: {hs['draft_pil']:,.0f}; full decode + matrix DCT: "
                 f"{hs['full_decode_ours']:,.0f} | >= {HASH_TARGET:,} img/s |")
    for ss in r["search_speed"].values():
        cells = "; ".join(method_cell(name, m, ss["queries"]) for name, m in ss["methods"].items())
        lines.append(f"| range search r<={ss['radius']}, {ss['database']:,} hashes | numpy brute force: "
                     f"{ss['numpy_brute_force']:,.0f} q/s | {cells} | >= {SEARCH_TARGET:,} q/s, exact |")
    embed_cell = (f"; {st['embedding_samples_per_cpu_s']:,.0f} samples/s with the embedding signal (hashes cached, tiny "
                  "encoder on CPU)") if "embedding_samples_per_cpu_s" in st else ""
    lines.append(f"| stage end to end (`dedup.run`, 1 process, 256 px JPEG shards) | | {st['samples_per_cpu_s']:,.0f} "
                 f"samples/s first run; {st['rerun_samples_per_cpu_s']:,.0f} samples/s rerun from the hash cache{embed_cell} | |")
    mih_build = max(ss["methods"]["numpy_mih_21_21_22"]["build_s"] for ss in r["search_speed"].values()
                    if "numpy_mih_21_21_22" in ss["methods"])
    lines += [
        "",
        (f"Draft decode vs full decode, bits of difference per image: {hs['draft_vs_full_bits']} (both sides of "
         f"the search use the draft path; simplejpeg and PIL draft mode give identical hashes: "
         f"{hs['draft_pil_equals_simplejpeg']}). Search: recall and exactness (no pair missing, none extra) checked "
         f"against brute force on the first 300 queries; the stage uses `numpy_mih_21_21_22` (pipeline/dedup/mih.py; build over "
         f"1M hashes {mih_build:.2f} s). faiss 4x16 nflip 2 is exact too, but 16-bit buckets hold ~15 of 1M hashes "
         "each; IndexBinaryHash probes one table and misses matches. Queries: half real hashes with 0-8 bits flipped, "
         "half hashes of unrelated photos; database: the eval hashes plus random ones."),
        "",
        ("pHash distances are (nearly) always even: a pHash has 32 bits set unless DCT coefficients tie with the "
         "median, so t=7 behaves as t=6. The negatives' false matches at 6-8 bits are mostly real: among the 30 "
         "closest pairs inside the CIFAR-10 test set about 19 are the same photo (cf. Barz & Denzler 2020), so the "
         "precision above is a lower bound. The code's default (`pipeline.dedup.DEFAULT_THRESHOLD`) is "
         f"{r['default_threshold_in_code']}.")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="../shared/data (CIFAR-10 test JPEGs); default: sample photo crops")
    p.add_argument("--eval-size", type=int, default=5000)
    p.add_argument("--positives", type=int, default=1000)
    p.add_argument("--negatives", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2, help="processes for the calibration hashing (not the speed runs)")
    p.add_argument("--encoder-steps", type=int, default=ENCODER_STEPS,
                   help=f"training steps of the bench's encoder (default {ENCODER_STEPS}; 0: no embedding calibration)")
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
        threshold = cal["chosen_threshold"] if cal["chosen_threshold"] is not None else dedup.DEFAULT_THRESHOLD
        queries = search_queries(cal["eval_hashes"], hash_items(shard_like, 1))
        ss = {f"r{r}_1M": search_speed(cal["eval_hashes"], queries, r) for r in sorted({threshold, 8})}
        ss[f"r{threshold}_100k"] = search_speed(cal["eval_hashes"], queries, threshold, size=100_000)   # an eval side's size
        log.info("search speed done at %.0f s", time.time() - started)
        st = stage_speed(shard_like * 4, images[:200], encoder.path if encoder else None)
    r = {"machine": machine(), "args": " ".join(argv or []) if argv else "", "images": source,
         "calibration": {k: v for k, v in cal.items() if k != "eval_hashes"}, "encoder": enc_info, "hash_speed": hs,
         "search_speed": ss, "stage": st, "shown_thresholds": [0, 2, 4, 6, 8, 10, 12], "shown_cosines": SHOWN_COSINES,
         "wall_s": time.time() - started, "default_threshold_in_code": dedup.DEFAULT_THRESHOLD,
         "default_embed_threshold_in_code": dedup.DEFAULT_EMBED_THRESHOLD}
    save_results("dedup", r)
    update_section("dedup", markdown(r))
    print(markdown(r))
    return r


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
