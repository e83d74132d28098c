"""Perceptual hashes for `dedup` (stage 5): 64-bit pHashes of every eval and shard image, in parallel, cached.

The hash is imagehash's `phash` (hash_size 8: DCT of the 32x32 grey image, the 8x8 low frequencies
against their median; Zauner 2010), as a uint64 whose bits are imagehash's row-major bits.
Robust signals (`SIGNALS`): a shard image gets three hashes from one decode (plain, inside its uniform frame,
its centre); an eval image is indexed as 44 variants (crops, centre, rotated centres, all mirrored too).
Fast path, frames, signals, parallelism and cache: the comment below the imports.
Numbers: BENCHMARKS.md, "Stage 5: dedup".
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import multiprocessing
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import imagehash
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from pipeline.common import files, rawtar
from pipeline.common.evalsets import EvalSet, eval_set_signature, iter_eval_images
from pipeline.common.images import image_member
from pipeline.common.records import uid_of_sample

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
# Signals: besides `phash_trimmed`, each shard image gets `phash_centre` (its centre), and an eval image is
# indexed as 44 variants (crops, centre, rotated centres, all mirrored too: the mirror's DCT is the original's
# with odd horizontal frequencies negated, so it costs no second decode). Resizing a box of the decoded image
# to 32x32 (LANCZOS) and the DCT are two small matrix products (`low_frequencies`), so a crop costs
# microseconds, not a PIL resize.
#
# Parallelism: plain worker processes (`multiprocessing.Pool.imap`, img2dataset-style), one task per shard
# (or per batch of eval images), not a Beam pipeline: hashing is embarrassingly parallel with no grouping, the
# unit of work and of caching is the shard file, and the search that follows wants one in-memory index in
# one process. Beam would add a per-element cost and a runner for nothing here; on a cluster, map
# `shard_hashes` over the shards with any executor (each call is pure apart from its cache file).
#
# Cache: one parquet per shard under `<cache>/shards/` (key, uid, phash, phash_trimmed, phash_centre, sha256,
# status), named by a digest of the shard's path, size, mtime, the draft setting and `HASH_VERSION`; one per
# eval set under `<cache>/eval/` (with every variant), keyed the same way by its files. A rerun, or a run
# against other eval sets, reads them instead of decoding again.

log = logging.getLogger(__name__)

HASH_VERSION = 3                  # bump when the hash function changes: invalidates every cache file
DRAFT_SIZE = 32                   # draft target = pHash's 32x32 input; measured in bench/bench_dedup.py
BORDER_TOL = 12                   # grey levels a frame pixel may differ from the frame colour (JPEG noise); the one
                                  # value tried: border recall 0.968, precision unchanged (bench/bench_dedup.py)

OK = "ok"
UNREADABLE_IMAGE = "unreadable_image"        # not an image, truncated, corrupt
DECOMPRESSION_BOMB = "decompression_bomb"    # PIL refuses to decode it (Image.MAX_IMAGE_PIXELS)
MISSING_IMAGE = "missing_image"              # a shard sample with json/txt but no image member

SHARD_SCHEMA = pa.schema([("key", pa.string()), ("uid", pa.string()), ("phash", pa.uint64()),
                          ("phash_trimmed", pa.uint64()), ("phash_centre", pa.uint64()), ("sha256", pa.string()),
                          ("status", pa.string())])
EVAL_SCHEMA = pa.schema([("image_id", pa.string()), ("label", pa.int64()), ("phash", pa.uint64()),
                         ("variants", pa.list_(pa.uint64())), ("sha256", pa.string()), ("status", pa.string())])

HASH_BITS = 8          # imagehash.phash defaults: hash_size 8 -> 64 bits,
PHASH_SIZE = 32        # highfreq_factor 4 -> a 32x32 image
# first HASH_BITS rows of the (unnormalised) DCT-II matrix of size PHASH_SIZE
_DCT_ROWS = np.cos(np.pi * np.arange(HASH_BITS)[:, None] * (2 * np.arange(PHASH_SIZE)[None, :] + 1) / (2 * PHASH_SIZE))
_DCT_ROWS_T = np.ascontiguousarray(_DCT_ROWS.T)
_MIRROR_SIGNS = np.array([(-1) ** v for v in range(HASH_BITS)], dtype=np.float64)[None, :]

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
    return hashes_of((_DCT_ROWS @ pixels @ _DCT_ROWS_T)[None])[0]


def hashes_of(lows: np.ndarray) -> list[int]:
    """pHash bits of a stack of 8x8 frequencies (k, 8, 8): each against its own median, row-major, most
    significant first (np.median of 64 values is the mean of the two middle ones; a sort of all k is cheaper)."""
    flat = lows.reshape(len(lows), HASH_BITS * HASH_BITS)
    middle = np.sort(flat, axis=1)[:, 31:33]
    bits = flat > ((middle[:, 0] + middle[:, 1]) / 2)[:, None]
    return np.packbits(bits, axis=1).view(">u8").ravel().tolist()


def grey_pixels(image: Image.Image) -> np.ndarray:
    """A decoded image as a (height, width) uint8 grey array (through its bytes: np.asarray of a PIL image costs more)."""
    grey = image if image.mode == "L" else image.convert("L")
    return np.frombuffer(grey.tobytes(), dtype=np.uint8).reshape(grey.height, grey.width)


def lanczos_weights(n_in: int, start: float, end: float, n_out: int = PHASH_SIZE) -> np.ndarray:
    """(n_out, n_in) weights of PIL's LANCZOS resize of [start, end) of n_in pixels to n_out (Pillow's
    precompute_coeffs: support 3 scaled by the reduction factor, taps normalised), in floating point."""
    scale = (end - start) / n_out
    stretch = max(scale, 1.0)
    support = 3.0 * stretch
    weights = np.zeros((n_out, n_in))
    for out in range(n_out):
        centre = start + (out + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        x = (np.arange(lo, hi) - centre + 0.5) / stretch
        taps = np.where(np.abs(x) < 3.0, np.sinc(x) * np.sinc(x / 3.0), 0.0)
        weights[out, lo:hi] = taps / taps.sum()
    return weights


@functools.lru_cache(maxsize=1024)   # a pure function of (size, box); images of a data set share a few sizes
def _resize_dct(n_in: int, start: float, end: float) -> np.ndarray:
    """(8, n_in): resizing [start, end) of n_in pixels to 32 with LANCZOS, then the 8 lowest DCT-II rows."""
    if (n_in, start, end) == (PHASH_SIZE, 0.0, float(PHASH_SIZE)):
        return _DCT_ROWS                     # already 32 pixels: no resampling (as PIL, which copies)
    return _DCT_ROWS @ lanczos_weights(n_in, start, end)


def low_frequencies(pixels: np.ndarray, box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """The 8x8 lowest 2-D DCT-II frequencies (rows vertical, columns horizontal) of a grey (h, w) array, or of its
    `box` (left, top, right, bottom in pixels, fractions allowed), resized to 32x32 with LANCZOS as matrices: a
    crop costs two small products, not a PIL resize (~10x the time on a 32 px image). Equal to `phash_of_image`'s
    frequencies on a 32x32 image; elsewhere it differs only by PIL's 8-bit rounding between its two passes."""
    h, w = pixels.shape
    left, top, right, bottom = box if box is not None else (0.0, 0.0, float(w), float(h))
    return _resize_dct(h, float(top), float(bottom)) @ pixels @ _resize_dct(w, float(left), float(right)).T


def mirrored(low: np.ndarray) -> np.ndarray:
    """The frequencies of the horizontally mirrored image: x -> 31 - x multiplies horizontal frequency v of a
    DCT-II by (-1)^v, so the mirror's pHash needs no second decode or resize (LANCZOS is symmetric)."""
    return low * _MIRROR_SIGNS


# ---- the robust signals: what web edits do to a picture, met by a few more hashes of the same decode -------
#
# The shard side (every training image, where the cost is) gets three hashes from its one decoded 32 px grey
# image: the plain pHash, the pHash inside its uniform frame (if any), and the pHash of its centre (the middle
# CENTRE of each side: a caption bar, logo or frame along an edge falls outside it). The eval side (small, hashed
# once and cached) gets every variant a copy of it may have become: mirrored, cropped at CROP_SIDES in a 3x3
# grid of positions, its centre, and its centre after a small rotation; all of them mirrored too. A pair is
# searched only where it means an edit (SIGNALS); the search stays exact (pipeline/dedup/mih.py), over more rows.
CENTRE = 0.8                        # side kept by the centre hash; edge overlays of <= 10% of a side fall outside
CROP_SIDES = (0.95, 0.9)            # eval crops: 5% and 10% of each side removed (web crops up to 10%)
CROP_POSITIONS = (0.0, 0.5, 1.0)    # where the crop sits along each axis (0: flush left/top)
ROTATIONS = (-3.0, 3.0)             # degrees: with 0, any rotation up to 5 degrees is within 2 of one of them


def _geometry() -> list[tuple[str, float, float, float, float]]:
    """(kind, side kept, x position, y position, degrees) of every eval-side variant before mirroring."""
    out = [("phash", 1.0, 0.5, 0.5, 0.0)]
    out += [("crop", side, x, y, 0.0) for side in CROP_SIDES for y in CROP_POSITIONS for x in CROP_POSITIONS]
    out += [("centre", CENTRE, 0.5, 0.5, 0.0)] + [("rotate", CENTRE, 0.5, 0.5, d) for d in ROTATIONS]
    return out


GEOMETRY = _geometry()
# each geometry as is, then mirrored: variant i of an eval image is GEOMETRY[i // 2], mirrored when i is odd
VARIANT_KINDS = tuple(kind for kind, *_ in GEOMETRY for _ in (0, 1))
VARIANT_MIRRORED = tuple(m for _ in GEOMETRY for m in (False, True))
QUERY_KINDS = ("phash", "frame", "centre")   # the shard side's hashes, in the order of `shard_signature`
# (shard hash, eval variant kind) -> the signal a match of that pair is reported as; other pairs are not searched
# (the frame-trimmed hash meets the whole eval image only: against its crops too it met 3x the negatives of
# border_10pct in bench_dedup, for no positive)
SIGNALS = {("phash", "phash"): "phash", ("phash", "crop"): "crop", ("frame", "phash"): "frame",
           ("centre", "phash"): "reframe", ("centre", "crop"): "reframe",
           ("centre", "centre"): "overlay",
           ("centre", "rotate"): "rotate"}
FLIP = "flip"                        # a match of the mirrored plain variant by the plain hash
# a pair found by several signals is reported as the first: the whole picture's hashes, then the centre's, from the
# same geometry on both sides (overlay) to the least alike (re-framed: the centre against the whole or a crop)
SIGNAL_ORDER = ("phash", FLIP, "frame", "crop", "overlay", "rotate", "reframe")


def signal_of(query_kind: str, variant: int) -> str | None:
    """The signal a (shard hash kind, eval variant index) pair reports, or None if that pair is not searched."""
    signal = SIGNALS.get((query_kind, VARIANT_KINDS[variant]))
    if signal == "phash" and VARIANT_MIRRORED[variant]:
        return FLIP
    return signal


def box_of(width: int, height: int, side: float, x: float, y: float) -> tuple[float, float, float, float]:
    """The box keeping `side` of each dimension, placed at fraction x, y of the slack (0.5, 0.5: centred)."""
    left, top = x * (1 - side) * width, y * (1 - side) * height
    return left, top, left + side * width, top + side * height


def variant_hashes(grey: np.ndarray) -> list[int]:
    """Every eval-side variant's pHash (VARIANT_KINDS order) of one grey (h, w) uint8 image; variant 0 is its pHash."""
    h, w = grey.shape
    image = Image.fromarray(grey, "L")
    # rotated about the centre, corners filled with the mean grey: only the centre (inside the corners) is hashed
    fill = int(grey.mean())
    pixels = {0.0: grey} | {d: grey_pixels(image.rotate(d, Image.Resampling.BICUBIC, fillcolor=fill)) for d in ROTATIONS}
    lows = np.stack([low_frequencies(pixels[degrees], None if side == 1.0 else box_of(w, h, side, x, y))
                     for _, side, x, y, degrees in GEOMETRY])
    return hashes_of(np.stack([lows, mirrored(lows)], axis=1).reshape(-1, HASH_BITS, HASH_BITS))


def shard_signature(pixels: np.ndarray) -> tuple[int, int | None, int]:
    """(pHash, pHash inside its uniform frame or None, pHash of its centre) of one grey (h, w) uint8 shard image:
    two or three pairs of small matrix products and one sort."""
    h, w = pixels.shape
    box = border_box_of_bytes(pixels.tobytes(), w, h)
    lows = [low_frequencies(pixels), low_frequencies(pixels, box_of(w, h, CENTRE, 0.5, 0.5))]
    if box:
        lows.append(low_frequencies(pixels, box))
    hashes = hashes_of(np.stack(lows))
    return hashes[0], hashes[2] if box else None, hashes[1]


def phash_reference(image: Image.Image) -> int:
    """imagehash.phash itself, as an int: the reference `phash_of_image` must equal."""
    return int.from_bytes(np.packbits(imagehash.phash(image).hash.ravel()).tobytes(), "big")


def decode_jpeg_small(data: bytes) -> np.ndarray | None:
    """A JPEG decoded by simplejpeg straight to grey (h, w) uint8 at the smallest DCT scale >= DRAFT_SIZE, or None to let PIL
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
    return pixels[:, :, 0]


def decode_for_hash(data: bytes, draft: bool = True) -> tuple[np.ndarray | None, str]:
    """(grey (h, w) uint8 pixels, OK) of encoded bytes, reduced in the decoder when `draft`, or (None, reason) if
    they cannot be decoded; never raises on bad bytes."""
    small = decode_jpeg_small(data) if draft else None
    if small is not None:
        return small, OK
    try:
        with Image.open(io.BytesIO(data)) as image:
            if draft and image.format == "JPEG":
                image.draft("L", (DRAFT_SIZE, DRAFT_SIZE))
            image.load()
            return grey_pixels(image), OK
    except Image.DecompressionBombError:
        return None, DECOMPRESSION_BOMB
    # OSError covers UnidentifiedImageError and "image file is truncated"; PIL's PNG reader raises
    # SyntaxError on broken chunks and ValueError on some bad headers.
    except (OSError, SyntaxError, ValueError):
        return None, UNREADABLE_IMAGE


def hash_image_bytes(data: bytes, draft: bool = True) -> tuple[int | None, str]:
    """(pHash, OK) of an encoded image, or (None, reason) if it cannot be decoded."""
    pixels, status = decode_for_hash(data, draft)
    return (None if pixels is None else phash_of_image(Image.fromarray(pixels, "L"))), status


def image_hashes(data: bytes, draft: bool = True) -> tuple[tuple[int, int | None, int] | None, str]:
    """(`shard_signature` of an encoded image, OK), or (None, reason) if it cannot be decoded."""
    pixels, status = decode_for_hash(data, draft)
    return (None if pixels is None else shard_signature(pixels)), status


def eval_image_hashes(data: bytes, draft: bool = True) -> tuple[list[int] | None, str]:
    """(`variant_hashes` of an encoded eval image, OK), or (None, reason) if it cannot be decoded."""
    pixels, status = decode_for_hash(data, draft)
    return (None if pixels is None else variant_hashes(pixels)), status


def trimmed_phash(image: Image.Image) -> int | None:
    """The pHash of the image inside its uniform frame (`uniform_border_box`), or None if it has no frame.

    pHash compares an image's low frequencies with their median; a frame shifts and shrinks the picture and
    moves many of them (border_10pct: recall 0.012 at 8 bits, BENCHMARKS.md, section dedup). Searching this
    second hash of the shard side brings framed copies back within the threshold."""
    return shard_signature(grey_pixels(image))[1]


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
    """One row per sample of a WebDataset shard (key, uid, phash, phash_trimmed, phash_centre, sha256, status), and the shard's
    read error.

    A corrupt or truncated tar yields the samples read before the damage plus the error text, not an exception.
    """
    rows: dict[str, list] = {name: [] for name in SHARD_SCHEMA.names}
    error = None
    try:
        with files.open_file(path, "rb") as f:
            for key, members in rawtar.group_by_key(rawtar.iter_members(f)):
                sample = {rawtar.extension(m): m.data for m in members}
                data = image_member(sample)
                hashes, status = image_hashes(data, draft) if data is not None else (None, MISSING_IMAGE)
                rows["key"].append(key)
                rows["uid"].append(uid_of_sample(key, sample))
                for column, value in zip(("phash", "phash_trimmed", "phash_centre"), hashes or (None,) * 3):
                    rows[column].append(value)
                rows["sha256"].append(sha256_hex(data) if data is not None else None)
                rows["status"].append(status)
    except (OSError, tarfile.TarError, EOFError) as e:
        error = f"{type(e).__name__}: {e}"
        log.warning("%s: corrupt shard, kept the %d samples read before: %s", path, len(rows["key"]), error)
    return pa.table(rows, schema=SHARD_SCHEMA), error


def file_signature(path: str, *parts) -> str:
    """Digest of a file's path, size and mtime plus settings: changes whenever the file or settings do."""
    text = "\x1f".join(map(str, (os.path.abspath(path) if "://" not in path else path, files.version(path),
                                 HASH_VERSION, *parts)))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def read_or_compute(cache_path: str, compute: Callable[[], tuple[pa.Table, str | None]]) -> tuple[pa.Table, str | None]:
    """The cached table (and error stored in its metadata), or compute, store atomically and return it (the cache
    may be local or on an object store, beside the stage's outputs)."""
    if files.exists(cache_path):
        with files.open_file(cache_path) as f:
            table = pq.read_table(f)
        meta = table.schema.metadata or {}
        error = meta.get(b"error", b"").decode() or None
        return table.replace_schema_metadata(None), error
    table, error = compute()
    files.makedirs(files.parent(cache_path))
    with files.atomic_write(cache_path) as f:
        pq.write_table(table.replace_schema_metadata({"error": error or ""}), f)
    return table, error


def shard_hashes(path: str, cache_dir: str, draft: bool = True) -> tuple[pa.Table, str | None]:
    """`hash_shard` through the cache (worker task: module-level so it pickles)."""
    stem = files.name(path).split(".")[0]
    cache_path = files.join(cache_dir, "shards", f"{stem}-{file_signature(path, draft)}.parquet")
    return read_or_compute(cache_path, lambda: hash_shard(path, draft))


# ---- eval sets -------------------------------------------------------------------------------------------

def hash_batch(batch: list[tuple[str, int, bytes]], draft: bool = True) -> list[tuple]:
    """(image_id, label, phash, variants, sha256, status) per (image_id, label, bytes): the eval-side worker task."""
    out = []
    for image_id, label, data in batch:
        variants, status = eval_image_hashes(data, draft)
        out.append((image_id, label, variants[0] if variants else None, variants, sha256_hex(data), status))
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
    """Hash table of one eval set (image_id, label, phash, variants, sha256, status), cached by the set's files."""
    cache_path = files.join(cache_dir, "eval", f"{eval_set.name}-{eval_set_signature(eval_set)}-"
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
