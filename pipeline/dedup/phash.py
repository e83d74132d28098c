"""Perceptual hashes for `dedup` (stage 5): 64-bit pHash of every eval and shard image, in parallel, cached.

The hash is imagehash's `phash` (hash_size 8: DCT of the 32x32 grey image, the 8x8 low frequencies
against their median; Zauner 2010), as a uint64 whose bits are imagehash's row-major bits.
Fast path, frames, parallelism and cache: the comment below the imports. Numbers: BENCHMARKS.md, "Stage 5: dedup".
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import fsspec
import imagehash
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from pipeline.common import rawtar
from pipeline.common.evalsets import EvalSet, eval_set_signature, iter_eval_images
from pipeline.common.images import image_member

try:  # optional fast JPEG path (see decode_jpeg_small); without it PIL's draft mode does the same, slower
    import simplejpeg
except ImportError:
    simplejpeg = None

# Fast path, frames, parallelism, cache
#
# Fast path: a JPEG is decoded straight to greyscale at 1/2, 1/4 or 1/8 scale (libjpeg's DCT-domain
# downscale, to the smallest size >= DRAFT_SIZE) instead of as the full RGB image that pHash then shrinks to
# 32x32 anyway: with simplejpeg when it is installed (libjpeg-turbo called directly, ~1.3x faster than PIL
# on 256 px JPEGs because PIL parses JPEG headers in Python), else with PIL's draft mode
# (`Image.draft("L", (DRAFT_SIZE, DRAFT_SIZE))`); both give the same pixels, so the same hashes. Measured
# on 256 px JPEG q95 (BENCHMARKS.md, section dedup; CPU seconds, one process, same run): full decode +
# imagehash.phash 538 img/s; draft decode + the matrix-DCT pHash below 2,136 (PIL) and 2,791 (simplejpeg).
# The draft hash differs from the full-decode one by 0 bits for 68% of images and by <= 4 bits for 98%. `bench/bench_dedup.py` measures both paths and the
# Hamming distance between their hashes (see BENCHMARKS.md, section dedup). Both sides (eval and shards) go
# through the same function, so the small shift draft mode causes applies to both.
#
# Frames: a copy with a border (a white frame of 10% of the side) moves its pHash by more than 8 bits nearly
# always: pHash alone finds 1.2% of such copies of CIFAR-10 images at 8 bits. Each shard image therefore also gets `phash_trimmed`: the pHash of the
# picture inside its uniform frame (`uniform_border_box`: outer lines within BORDER_TOL grey levels of the frame
# colour, on at least two sides), or null when it has none, and dedup searches both. Measured on CIFAR-10 in
# bench/bench_dedup.py (BENCHMARKS.md, section dedup): border recall at 8 bits 0.012 -> 0.968, precision on
# resize+recompress unchanged (0.997); the check runs on the already decoded 32 px grey image and costs ~70 us per image
# (3,097 -> 2,534 img/s per core in the same run).
#
# Parallelism: plain worker processes (`multiprocessing.Pool.imap`, img2dataset-style), one task per shard
# (or per batch of eval images), not a Beam pipeline: hashing is embarrassingly parallel with no grouping, the
# unit of work and of caching is the shard file, and the search that follows wants one in-memory index in
# one process. Beam would add a per-element cost and a runner for nothing here; on a cluster, map
# `shard_hashes` over the shards with any executor (each call is pure apart from its cache file).
#
# Cache: one parquet per shard under `<cache>/shards/` (key, uid, phash, phash_trimmed, sha256, status), named
# by a digest of the shard's path, size,
# mtime, the draft setting and `HASH_VERSION`; one per eval set under `<cache>/eval/`, keyed the same way by
# its files. A rerun, or a run against other eval sets, reads them instead of decoding again.

log = logging.getLogger(__name__)

HASH_VERSION = 2                  # bump when the hash function changes: invalidates every cache file
DRAFT_SIZE = 32                   # draft target = pHash's 32x32 input; measured in bench/bench_dedup.py
BORDER_TOL = 12                   # grey levels a frame pixel may differ from the frame colour (JPEG noise); the one
                                  # value tried: border recall 0.968, precision unchanged (bench/bench_dedup.py)

OK = "ok"
UNREADABLE_IMAGE = "unreadable_image"        # not an image, truncated, corrupt
DECOMPRESSION_BOMB = "decompression_bomb"    # PIL refuses to decode it (Image.MAX_IMAGE_PIXELS)
MISSING_IMAGE = "missing_image"              # a shard sample with json/txt but no image member

SHARD_SCHEMA = pa.schema([("key", pa.string()), ("uid", pa.string()), ("phash", pa.uint64()),
                          ("phash_trimmed", pa.uint64()), ("sha256", pa.string()), ("status", pa.string())])
EVAL_SCHEMA = pa.schema([("image_id", pa.string()), ("label", pa.int64()), ("phash", pa.uint64()),
                         ("sha256", pa.string()), ("status", pa.string())])

HASH_BITS = 8          # imagehash.phash defaults: hash_size 8 -> 64 bits,
PHASH_SIZE = 32        # highfreq_factor 4 -> a 32x32 image
# first HASH_BITS rows of the (unnormalised) DCT-II matrix of size PHASH_SIZE
_DCT_ROWS = np.cos(np.pi * np.arange(HASH_BITS)[:, None] * (2 * np.arange(PHASH_SIZE)[None, :] + 1) / (2 * PHASH_SIZE))
_DCT_ROWS_T = np.ascontiguousarray(_DCT_ROWS.T)

T = TypeVar("T")
R = TypeVar("R")


def phash_of_image(image: Image.Image) -> int:
    """imagehash.phash(image) as an int (bit i = imagehash's i-th bit, row-major, most significant first).

    The same steps as imagehash 4.3 (grey, LANCZOS to 32x32, 2-D DCT-II, the 8x8 lowest frequencies
    against their median), with the DCT as two small matrix products instead of scipy.fftpack and the median
    from a sort: ~2.5x faster per hash (not per image: decoding costs more), bit-identical (tests/test_dedup.py compares it with imagehash.phash). The DCT's constant
    factor 4 is left out: it does not change which coefficients exceed the median.
    """
    pixels = np.asarray(image.convert("L").resize((PHASH_SIZE, PHASH_SIZE), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_DCT_ROWS @ pixels @ _DCT_ROWS_T).ravel()
    middle = np.sort(low)[31:33]            # np.median of 64 values, without its overhead: the mean of the two middle
    return int.from_bytes(np.packbits(low > (middle[0] + middle[1]) / 2).tobytes(), "big")


def phash_reference(image: Image.Image) -> int:
    """imagehash.phash itself, as an int: the reference `phash_of_image` must equal."""
    return int.from_bytes(np.packbits(imagehash.phash(image).hash.ravel()).tobytes(), "big")


def decode_jpeg_small(data: bytes) -> Image.Image | None:
    """A JPEG decoded by simplejpeg straight to grey at the smallest DCT scale >= DRAFT_SIZE, or None to let PIL
    decide (simplejpeg missing, not a JPEG, CMYK, damaged: PIL then decodes it or names the reason).

    The pixels are libjpeg-turbo's scaled decode, as with PIL's draft mode (hashes bit-identical in
    bench/bench_dedup.py and tests/test_dedup.py), without PIL's header parsing in Python: ~1.3x faster per image.
    """
    if simplejpeg is None or not simplejpeg.is_jpeg(data):
        return None
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        if Image.MAX_IMAGE_PIXELS and height * width > 2 * Image.MAX_IMAGE_PIXELS:
            return None   # PIL raises DecompressionBombError for it, with the same limit as everywhere else
        pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY", min_height=DRAFT_SIZE, min_width=DRAFT_SIZE)
    except ValueError:
        return None
    return Image.fromarray(pixels[:, :, 0], "L")


def decode_for_hash(data: bytes, draft: bool = True) -> tuple[Image.Image | None, str]:
    """(decoded image, OK) of encoded bytes, reduced in the decoder when `draft`, or (None, reason) if they cannot
    be decoded; never raises on bad bytes."""
    small = decode_jpeg_small(data) if draft else None
    if small is not None:
        return small, OK
    try:
        with Image.open(io.BytesIO(data)) as image:
            if draft and image.format == "JPEG":
                image.draft("L", (DRAFT_SIZE, DRAFT_SIZE))
            image.load()
            return image, OK
    except Image.DecompressionBombError:
        return None, DECOMPRESSION_BOMB
    # OSError covers UnidentifiedImageError and "image file is truncated"; PIL's PNG reader raises
    # SyntaxError on broken chunks and ValueError on some bad headers.
    except (OSError, SyntaxError, ValueError):
        return None, UNREADABLE_IMAGE


def hash_image_bytes(data: bytes, draft: bool = True) -> tuple[int | None, str]:
    """(pHash, OK) of an encoded image, or (None, reason) if it cannot be decoded (eval images: no frame check)."""
    image, status = decode_for_hash(data, draft)
    return (None if image is None else phash_of_image(image)), status


def image_hashes(data: bytes, draft: bool = True) -> tuple[int | None, int | None, str]:
    """(pHash, pHash inside its uniform frame or None if it has no frame, OK), or (None, None, reason)."""
    image, status = decode_for_hash(data, draft)
    if image is None:
        return None, None, status
    return phash_of_image(image), trimmed_phash(image), status


def trimmed_phash(image: Image.Image) -> int | None:
    """The pHash of the image inside its uniform frame (`uniform_border_box`), or None if it has no frame.

    pHash compares an image's low frequencies with their median; a frame shifts and shrinks the picture and
    moves many of them (border_10pct: recall 0.012 at 8 bits, BENCHMARKS.md, section dedup). Searching this
    second hash of the shard side brings framed copies back within the threshold (recall 0.968)."""
    grey = image if image.mode == "L" else image.convert("L")
    box = border_box_of_bytes(grey.tobytes(), *grey.size)
    return phash_of_image(grey.crop(box)) if box else None


def uniform_border_box(grey: np.ndarray, tol: int = BORDER_TOL, min_keep: float = 0.5) -> tuple[int, int, int, int] | None:
    """The (left, top, right, bottom) box inside a uniform frame of a uint8 grey image, or None if it has none.

    The frame colour is the median of the outermost lines that are flat (max - min <= 2 tol); lines are peeled
    from each side while every pixel is within `tol` of it, plus one more (the line where JPEG and scaled
    decoding blur frame into content). A frame counts only if at least two sides had such lines and the box
    keeps >= `min_keep` of each side, so an image with sky along one edge keeps its hash. Lines are compared as
    bytes (Python's min/max of 32 bytes cost less than numpy's per-call overhead); most pictures are rejected
    after the min/max of their four outer lines."""
    h, w = grey.shape
    return border_box_of_bytes(np.ascontiguousarray(grey, dtype=np.uint8).tobytes(), w, h, tol, min_keep)


def border_box_of_bytes(pixels: bytes, w: int, h: int, tol: int = BORDER_TOL,
                        min_keep: float = 0.5) -> tuple[int, int, int, int] | None:
    """`uniform_border_box` of a w x h grey image given as its row-major bytes (PIL's `tobytes()` of an "L" image)."""
    def line(side: int, i: int) -> bytes:   # the i-th line from the left, top, right or bottom
        if side == 0:
            return pixels[i::w]
        if side == 1:
            return pixels[i * w:(i + 1) * w]
        if side == 2:
            return pixels[w - 1 - i::w]
        return pixels[(h - 1 - i) * w:(h - i) * w]

    outer = [line(side, 0) for side in range(4)]
    flat = [max(e) - min(e) <= 2 * tol for e in outer]
    if sum(flat) < 2:
        return None
    values = sorted(b"".join(e for e, f in zip(outer, flat) if f))
    low, high = values[len(values) // 2] - tol, values[len(values) // 2] + tol
    depth = []
    for side, length in enumerate((w, h, w, h)):
        n, deepest = 0, int((1 - min_keep) * length)   # a frame deeper than that fails the min_keep test anyway
        while n <= deepest and low <= min(current := line(side, n)) and max(current) <= high:
            n += 1
        depth.append(n)
    if sum(d > 0 for d in depth) < 2:
        return None
    left, top, right, bottom = (d + 1 if d else 0 for d in depth)
    if (w - left - right) < min_keep * w or (h - top - bottom) < min_keep * h:
        return None
    return left, top, w - right, h - bottom


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def to_binary_codes(hashes: np.ndarray) -> np.ndarray:
    """uint64 hashes -> (n, 8) uint8 codes, the layout faiss binary indexes take (Hamming distance is kept)."""
    return np.ascontiguousarray(np.asarray(hashes, dtype=">u8")).view(np.uint8).reshape(-1, 8)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- shards ----------------------------------------------------------------------------------------------

def hash_shard(path: str, draft: bool = True) -> tuple[pa.Table, str | None]:
    """One row per sample of a WebDataset shard (key, uid, phash, phash_trimmed, sha256, status), and the shard's
    read error.

    A corrupt or truncated tar yields the samples read before the damage plus the error text, not an exception.
    """
    rows: dict[str, list] = {name: [] for name in SHARD_SCHEMA.names}
    error = None
    try:
        with fsspec.open(path, "rb") as f:
            for key, members in rawtar.group_by_key(rawtar.iter_members(f)):
                sample = {rawtar.extension(m): m.data for m in members}
                data = image_member(sample)
                phash, trimmed, status = image_hashes(data, draft) if data is not None else (None, None, MISSING_IMAGE)
                rows["key"].append(key)
                rows["uid"].append(uid_of_sample(key, sample))
                rows["phash"].append(phash)
                rows["phash_trimmed"].append(trimmed)
                rows["sha256"].append(sha256_hex(data) if data is not None else None)
                rows["status"].append(status)
    except (OSError, tarfile.TarError, EOFError) as e:
        error = f"{type(e).__name__}: {e}"
        log.warning("%s: corrupt shard, kept the %d samples read before: %s", path, len(rows["key"]), error)
    return pa.table(rows, schema=SHARD_SCHEMA), error


def uid_of_sample(key: str, sample: dict[str, bytes]) -> str:
    """The sample's uid from its json (the `shards` stage writes it), else its key (= uid in our shards)."""
    try:
        return str(json.loads(sample["json"])["uid"]) if "json" in sample else key
    except (ValueError, KeyError, TypeError):
        return key


def file_signature(path: str, *parts) -> str:
    """Digest of a file's path, size and mtime plus settings: changes whenever the file or settings do."""
    fs, fs_path = fsspec.core.url_to_fs(path)
    info = fs.info(fs_path)
    mtime = info.get("mtime") or info.get("LastModified") or info.get("updated") or ""
    text = "\x1f".join(map(str, (os.path.abspath(path) if "://" not in path else path, info.get("size"), mtime,
                                 HASH_VERSION, *parts)))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def read_or_compute(cache_path: str, compute: Callable[[], tuple[pa.Table, str | None]]) -> tuple[pa.Table, str | None]:
    """The cached table (and error stored in its metadata), or compute, store atomically and return it."""
    if os.path.exists(cache_path):
        table = pq.read_table(cache_path)
        meta = table.schema.metadata or {}
        error = meta.get(b"error", b"").decode() or None
        return table.replace_schema_metadata(None), error
    table, error = compute()
    os.makedirs(os.path.dirname(cache_path), exist_ok=True)
    tmp = f"{cache_path}.tmp{os.getpid()}"
    pq.write_table(table.replace_schema_metadata({"error": error or ""}), tmp)
    os.replace(tmp, cache_path)
    return table, error


def shard_hashes(path: str, cache_dir: str, draft: bool = True) -> tuple[pa.Table, str | None]:
    """`hash_shard` through the cache (worker task: module-level so it pickles)."""
    stem = os.path.basename(path).split(".")[0]
    cache_path = os.path.join(cache_dir, "shards", f"{stem}-{file_signature(path, draft)}.parquet")
    return read_or_compute(cache_path, lambda: hash_shard(path, draft))


# ---- eval sets -------------------------------------------------------------------------------------------

def hash_batch(batch: list[tuple[str, int, bytes]], draft: bool = True) -> list[tuple]:
    """(image_id, label, phash, sha256, status) per (image_id, label, bytes): the eval-side worker task."""
    out = []
    for image_id, label, data in batch:
        phash, status = hash_image_bytes(data, draft)
        out.append((image_id, label, phash, sha256_hex(data), status))
    return out


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def eval_hashes(eval_set: EvalSet, cache_dir: str, workers: int, draft: bool = True) -> pa.Table:
    """Hash table of one eval set (image_id, label, phash, sha256, status), cached by the set's files."""
    cache_path = os.path.join(cache_dir, "eval", f"{eval_set.name}-{eval_set_signature(eval_set)}-"
                                                 f"{HASH_VERSION}-{int(draft)}.parquet")

    def compute() -> tuple[pa.Table, None]:
        rows = []
        batches = batched(iter_eval_images(eval_set), 256)
        for out in parallel_map(hash_batch, batches, workers, desc=f"hash eval {eval_set.name}", draft=draft):
            rows.extend(out)
        columns = list(zip(*rows))
        return pa.table({n: list(c) for n, c in zip(EVAL_SCHEMA.names, columns)}, schema=EVAL_SCHEMA), None

    return read_or_compute(cache_path, compute)[0]


# ---- parallel map ----------------------------------------------------------------------------------------

def _call(args):
    fn, item, kwargs = args
    return fn(item, **kwargs)


def parallel_map(fn: Callable[..., R], items: Iterable[T], workers: int, desc: str, total: int | None = None,
                 **kwargs) -> Iterator[R]:
    """fn(item, **kwargs) for each item, in input order, on `workers` processes (inline when workers <= 1)."""
    tasks = ((fn, item, kwargs) for item in items)
    bar = {"desc": desc, "total": total, "unit": "task", "leave": False, "disable": None}
    if workers <= 1:
        yield from tqdm(map(_call, tasks), **bar)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        # spawn, not fork: the parent may already hold faiss/OpenMP threads, which do not survive a fork
        yield from tqdm(pool.imap(_call, tasks, chunksize=1), **bar)
