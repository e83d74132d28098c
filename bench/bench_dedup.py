"""Benchmark and calibration of stage 5 (`dedup`): pHash precision/recall, hashes/s and searches/s per core.

Calibration: `--eval-size` real images are the eval set (indexed); `--positives` of them are transformed the
way the web copies images (TRANSFORMS below) and must match their source; `--negatives` other real images
of the same kind, transformed the same way, must match nothing. Per transform and threshold: precision =
TP / (TP + FP), recall = TP / positives, where TP = a positive matching its source, FP = a negative matching
any eval image or a positive matching only other eval images. Positives and negatives are 1:1, so precision
is for a 50% duplicate rate; the false-positive rate per negative is printed too (web data has far fewer
duplicates, so multiply it by the number of training images to get the expected wrongly dropped samples).
The default threshold is the one with the best recall on the resize+recompress transforms at precision >= 0.99.

Real images: the CIFAR-10 test JPEGs in `--data` (../shared/data/cifar10-test-jpg.tar.gz: 32x32, the
classes look alike, so the negatives are hard); without `--data`, 64x64 crops of the sample photos in
data/sample/photos (fewer distinct scenes: overlapping crops make harder negatives still).

Speed, per core (CPU seconds of this single process; faiss limited to one thread), each next to its reference
measured in the same run:
  - hashing 256x256 JPEGs (shard-like): full decode + imagehash.phash (reference) vs the stage's path
    (draft decode + the matrix-DCT pHash), and how many bits the draft path moves a hash;
  - Hamming range search of real query hashes in a 1M database (real + random hashes): numpy brute force
    (reference) vs faiss IndexBinaryFlat vs IndexBinaryMultiHash, with recall checked against brute force;
  - the stage end to end (`pipeline.dedup.run`, one process) on shards of 256 px JPEGs.

Run: make bench DATA=../shared/data   or   python -m bench.bench_dedup [--data ../shared/data]  (< 5 minutes)
"""

from __future__ import annotations

import argparse
import io
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
from pipeline import dedup, phash

log = logging.getLogger("bench_dedup")

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "data" / "sample" / "photos"
THRESHOLDS = list(range(17))
RESIZE_RECOMPRESS = ("resize_up_q40", "resize_down_up_q50")   # the transforms the default is chosen on
MIN_PRECISION = 0.99                                          # the bar for the default threshold
HASH_TARGET, SEARCH_TARGET = 2_000, 5_000                     # DESIGN.md: img/s and queries/s per core


# ---- real images -----------------------------------------------------------------------------------------

def cifar_images(data: Path) -> list[bytes]:
    """The CIFAR-10 test JPEGs in a fixed order (sorted member names)."""
    with tarfile.open(data / "cifar10-test-jpg.tar.gz") as tar:   # read in tar order: a .gz cannot seek back cheaply
        by_name = {m.name: tar.extractfile(m).read() for m in tar if m.isfile() and m.name.endswith(".jpg")}
    return [by_name[name] for name in sorted(by_name)]


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


def transform_and_hash(task: tuple[str, bytes]) -> int:
    """Worker task: apply the named transform to an image and hash the result with the stage's hash."""
    name, data = task
    return phash.hash_image_bytes(TRANSFORMS[name](Image.open(io.BytesIO(data)).convert("RGB")))[0]


def hash_items(images: list[bytes], workers: int) -> np.ndarray:
    out = []
    for hashes in phash.parallel_map(_hash_batch, phash.batched(images, 500), workers, desc="hash"):
        out += hashes
    return np.array(out, dtype=np.uint64)


def _hash_batch(batch: list[bytes]) -> list[int]:
    return [phash.hash_image_bytes(d)[0] for d in batch]


def _transform_batch(batch: list[tuple[str, bytes]]) -> list[int]:
    return [transform_and_hash(t) for t in batch]


# ---- calibration -----------------------------------------------------------------------------------------

def distances(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """(len(queries), len(database)) Hamming distances of uint64 hashes (numpy brute force)."""
    return np.bitwise_count(queries[:, None] ^ database[None, :]).astype(np.int16)


def curve(pos_d: np.ndarray, pos_source: np.ndarray, neg_d: np.ndarray) -> list[dict]:
    """Precision/recall per threshold from the distance matrices of positives (with sources) and negatives."""
    rows = np.arange(len(pos_d))
    to_source = pos_d[rows, pos_source]
    others = pos_d.copy()
    others[rows, pos_source] = 99
    to_other, neg_min = others.min(axis=1), neg_d.min(axis=1)
    out = []
    for t in THRESHOLDS:
        tp = int((to_source <= t).sum())
        fp = int((neg_min <= t).sum() + ((to_source > t) & (to_other <= t)).sum())
        out.append({"threshold": t, "tp": tp, "fp": fp, "recall": tp / len(pos_d),
                    "precision": tp / (tp + fp) if tp + fp else 1.0, "fp_per_negative": float((neg_min <= t).mean())})
    return out


def calibrate(images: list[bytes], eval_size: int, n_pos: int, n_neg: int, workers: int) -> dict:
    rng = random.Random(0)
    order = list(range(len(images)))
    rng.shuffle(order)
    eval_idx, neg_idx = order[:eval_size], order[eval_size:eval_size + n_neg]
    pos_local = rng.sample(range(eval_size), n_pos)           # positions within the eval set
    eval_hashes = hash_items([images[i] for i in eval_idx], workers)
    per_transform = {}
    for name in TRANSFORMS:
        tasks = [(name, images[eval_idx[j]]) for j in pos_local] + [(name, images[i]) for i in neg_idx]
        hashes = []
        for out in phash.parallel_map(_transform_batch, phash.batched(tasks, 250), workers, desc=name):
            hashes += out
        hashes = np.array(hashes, dtype=np.uint64)
        per_transform[name] = curve(distances(hashes[:n_pos], eval_hashes), np.array(pos_local),
                                    distances(hashes[n_pos:], eval_hashes))
    pooled = pool_curves([per_transform[n] for n in RESIZE_RECOMPRESS])
    everything = pool_curves(list(per_transform.values()))
    best = choose_threshold(pooled, everything)
    return {"per_transform": per_transform, "resize_recompress": pooled, "all_transforms": everything,
            "chosen_threshold": best["threshold"] if best else None, "chosen": best,
            "eval_size": eval_size, "positives": n_pos, "negatives": n_neg, "eval_hashes": eval_hashes}


def choose_threshold(resize_recompress: list[dict], everything: list[dict]) -> dict | None:
    """The best recall on resize+recompress at precision >= MIN_PRECISION; among equal recalls, the threshold
    with the best recall on all transforms whose precision there also stays >= MIN_PRECISION (more edited
    copies caught at no cost below the bar), then the smallest."""
    ok = [(rr, allt) for rr, allt in zip(resize_recompress, everything) if rr["precision"] >= MIN_PRECISION]
    if not ok:
        return None
    best_rr = max(rr["recall"] for rr, _ in ok)
    tied = [(rr, allt) for rr, allt in ok if rr["recall"] == best_rr]
    return max(tied, key=lambda p: (p[1]["precision"] >= MIN_PRECISION, p[1]["recall"] if p[1]["precision"] >= MIN_PRECISION
                                    else 0, -p[0]["threshold"]))[0]


def pool_curves(curves: list[list[dict]]) -> list[dict]:
    """Curves of several transforms with the same number of positives each, pooled."""
    out = []
    for rows in zip(*curves):
        tp, fp = sum(r["tp"] for r in rows), sum(r["fp"] for r in rows)
        out.append({"threshold": rows[0]["threshold"], "tp": tp, "fp": fp, "precision": tp / (tp + fp) if tp + fp else 1.0,
                    "recall": sum(r["recall"] for r in rows) / len(rows),
                    "fp_per_negative": sum(r["fp_per_negative"] for r in rows) / len(rows)})
    return out


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
    return phash.hash_image_bytes(data, draft=True)[0]


def draft_pil(data: bytes) -> int:
    """The stage's path with simplejpeg switched off: PIL draft mode."""
    fast, phash.simplejpeg = phash.simplejpeg, None
    try:
        return phash.hash_image_bytes(data, draft=True)[0]
    finally:
        phash.simplejpeg = fast


def hash_speed(images: list[bytes]) -> dict:
    for f in (full_decode_imagehash, draft_ours):   # warm up imports (scipy.fftpack loads on first use)
        f(images[0])
    result = {"images": len(images), "image": "256x256 JPEG q95",
              "full_decode_imagehash": cpu_rate(full_decode_imagehash, images, 2),
              "full_decode_ours": cpu_rate(full_decode_ours, images, 2),
              "draft_pil": cpu_rate(draft_pil, images, 2),
              "draft_ours": cpu_rate(draft_ours, images, 2), "simplejpeg": phash.simplejpeg is not None}
    result["draft_pil_equals_simplejpeg"] = all(draft_pil(d) == draft_ours(d) for d in images)
    full = np.array([full_decode_imagehash(d) for d in images], dtype=np.uint64)
    draft = np.array([draft_ours(d) for d in images], dtype=np.uint64)
    moved = np.bitwise_count(full ^ draft)
    result["draft_vs_full_bits"] = {int(k): int(v) for k, v in zip(*np.unique(moved, return_counts=True))}
    result["speedup"] = result["draft_ours"] / result["full_decode_imagehash"]
    return result


def search_speed(real_hashes: np.ndarray, queries: np.ndarray, threshold: int, size: int = 1_000_000) -> dict:
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    database = np.concatenate([real_hashes, rng.integers(0, 2**63, size - len(real_hashes), dtype=np.uint64) * 2 +
                               rng.integers(0, 2, size - len(real_hashes), dtype=np.uint64)])
    brute_q = queries[:200]
    start = time.process_time()
    truth = [set(np.nonzero(np.bitwise_count(database ^ q) <= threshold)[0].tolist()) for q in brute_q]
    brute = len(brute_q) / (time.process_time() - start)
    result = {"database": size, "real_in_database": len(real_hashes), "queries": len(queries), "radius": threshold,
              "numpy_brute_force": brute}
    for name, index in (("faiss_flat", faiss.IndexBinaryFlat(64)), ("faiss_multihash", None)):
        if index is None:
            index = faiss.IndexBinaryMultiHash(64, dedup.MULTIHASH_NHASH, dedup.MULTIHASH_BITS)
            index.nflip = threshold // dedup.MULTIHASH_NHASH
        start = time.process_time()
        index.add(phash.to_binary_codes(database))
        build = time.process_time() - start
        start = time.process_time()
        lims, _, ids = index.range_search(phash.to_binary_codes(queries), threshold + 1)
        rate = len(queries) / (time.process_time() - start)
        found = [set(ids[lims[i]:lims[i + 1]].tolist()) for i in range(len(brute_q))]
        result[name] = rate
        result[f"{name}_build_s"] = build
        result[f"{name}_recall"] = sum(len(f & t) for f, t in zip(found, truth)) / max(1, sum(len(t) for t in truth))
    return result


def stage_speed(images: list[bytes], eval_images: list[bytes], per_shard: int = 500) -> dict:
    """`pipeline.dedup.run` end to end in one process on shards of the given images; samples per CPU second."""
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
    return {"samples": manifest["counters"]["read"], "dropped": manifest["counters"]["rejected"],
            "samples_per_cpu_s": manifest["counters"]["read"] / cold, "rerun_samples_per_cpu_s": manifest["counters"]["read"] / warm}


# ---- report ----------------------------------------------------------------------------------------------

def markdown(r: dict) -> str:
    cal, hs, st = r["calibration"], r["hash_speed"], r["stage"]
    c = cal["chosen"]
    lines = [
        "## Stage 5: dedup (perceptual-hash near-duplicates of eval images)", "",
        (f"Machine: {machine_line(r['machine'])}. Command: `python -m bench.bench_dedup {r['args']}`. "
         f"Images: {r['images']}."), "",
        (f"**Threshold chosen: {cal['chosen_threshold']} bits** (best recall on resize+recompress at precision >= "
         f"{MIN_PRECISION}): precision {c['precision']:.3f}, recall {c['recall']:.3f}, false positives per negative "
         f"{c['fp_per_negative']:.4f}. Eval set {cal['eval_size']} images; per transform {cal['positives']} positives "
         f"(transformed eval images) and {cal['negatives']} negatives (other images, same transform)."), "",
        "Precision / recall per transform and threshold:", "",
        "| transform | " + " | ".join(f"t={t}" for t in r["shown_thresholds"]) + " |",
        "|---|" + "---:|" * len(r["shown_thresholds"])]
    curves = dict(cal["per_transform"], resize_recompress_pooled=cal["resize_recompress"])
    for name, rows in curves.items():
        cells = [f"{rows[t]['precision']:.3f} / {rows[t]['recall']:.3f}" for t in r["shown_thresholds"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Speed per core (CPU seconds of one process; faiss on one thread), each beside its reference:", "",
              "| what | reference | measured | target |", "|---|---:|---:|---:|"]
    lines.append(f"| pHash, {hs['image']} | full decode + imagehash: {hs['full_decode_imagehash']:,.0f} img/s | "
                 f"the stage's path (simplejpeg scaled grey decode + matrix-DCT pHash): {hs['draft_ours']:,.0f} img/s "
                 f"({hs['speedup']:.1f}x); PIL draft mode instead of simplejpeg: {hs['draft_pil']:,.0f}; full decode + "
                 f"matrix DCT: {hs['full_decode_ours']:,.0f} | >= {HASH_TARGET:,} img/s |")
    for ss in r["search_speed"].values():
        lines.append(f"| range search r<={ss['radius']}, {ss['database']:,} hashes | numpy brute force: "
                     f"{ss['numpy_brute_force']:,.0f} q/s | MultiHash 3x21 (nflip {ss['radius'] // 3}): "
                     f"{ss['faiss_multihash']:,.0f} q/s (recall {ss['faiss_multihash_recall']:.3f}); Flat: "
                     f"{ss['faiss_flat']:,.0f} q/s (recall {ss['faiss_flat_recall']:.3f}) | >= {SEARCH_TARGET:,} q/s, exact |")
    lines.append(f"| stage end to end (`dedup.run`, 1 process, 256 px JPEG shards) | | {st['samples_per_cpu_s']:,.0f} "
                 f"samples/s first run; {st['rerun_samples_per_cpu_s']:,.0f} samples/s rerun from the hash cache | |")
    build_s = max(ss["faiss_multihash_build_s"] for ss in r["search_speed"].values())
    pooled = ", ".join(f"t={x['threshold']}: {x['precision']:.3f} / {x['recall']:.3f}"
                       for x in cal["all_transforms"] if x["threshold"] in r["shown_thresholds"])
    lines += [
        "",
        (f"Draft decode vs full decode, bits of difference per image: {hs['draft_vs_full_bits']} (both sides of "
         f"the search use the draft path; simplejpeg and PIL draft mode give identical hashes: "
         f"{hs['draft_pil_equals_simplejpeg']}). MultiHash index build over 1M hashes: {build_s:.2f} s. Queries: half "
         "real hashes with 0-8 bits flipped, half hashes of unrelated photos; database: the eval hashes plus random ones."),
        "",
        ("pHash distances are (nearly) always even: a pHash has 32 bits set unless DCT coefficients tie with the "
         "median, so t=7 behaves as t=6. The negatives' false matches at 6-8 bits are mostly real: among the 30 "
         "closest pairs inside the CIFAR-10 test set about 19 are the same photo (cf. Barz & Denzler 2020), so the "
         "precision above is a lower bound. The code's default (`pipeline.dedup.DEFAULT_THRESHOLD`) is "
         f"{r['default_threshold_in_code']}."),
        "", f"All transforms pooled (precision / recall): {pooled}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="../shared/data (CIFAR-10 test JPEGs); default: sample photo crops")
    p.add_argument("--eval-size", type=int, default=5000)
    p.add_argument("--positives", type=int, default=1000)
    p.add_argument("--negatives", type=int, default=1000)
    p.add_argument("--workers", type=int, default=2, help="processes for the calibration hashing (not the speed runs)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.time()
    if args.data:
        images, source = cifar_images(args.data), "CIFAR-10 test (32x32 JPEG)"
    else:
        images, source = photo_crops(args.eval_size + args.negatives, seed=0), "64x64 crops of data/sample/photos"
    eval_size = min(args.eval_size, len(images) - args.negatives)
    cal = calibrate(images, eval_size, min(args.positives, eval_size), args.negatives, args.workers)
    log.info("calibration done at %.0f s", time.time() - started)
    shard_like = shard_like_jpegs(300)
    hs = hash_speed(shard_like)
    threshold = cal["chosen_threshold"] if cal["chosen_threshold"] is not None else dedup.DEFAULT_THRESHOLD
    log.info("calibration and hash speed done at %.0f s", time.time() - started)
    queries = search_queries(cal["eval_hashes"], hash_items(shard_like, 1))
    ss = {f"r{r}_1M": search_speed(cal["eval_hashes"], queries, r) for r in sorted({threshold, 8})}
    ss[f"r{threshold}_100k"] = search_speed(cal["eval_hashes"], queries, threshold, size=100_000)   # an eval side's size
    log.info("search speed done at %.0f s", time.time() - started)
    st = stage_speed(shard_like * 4, images[:200])
    r = {"machine": machine(), "args": " ".join(argv or []) if argv else "", "images": source,
         "calibration": {k: v for k, v in cal.items() if k != "eval_hashes"}, "hash_speed": hs, "search_speed": ss,
         "stage": st, "shown_thresholds": [0, 2, 4, 6, 8, 10, 12], "wall_s": time.time() - started,
         "default_threshold_in_code": dedup.DEFAULT_THRESHOLD}
    save_results("dedup", r)
    update_section("dedup", markdown(r))
    print(markdown(r))
    print(f"\nwall time {r['wall_s']:.0f} s")
    return r


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
