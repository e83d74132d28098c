"""Stage 5 (`make dedup`): find the training samples that are near-duplicates of evaluation images.

Paper: CLIP (Radford et al. 2021, section 5 and appendix C) found copies of eval images in web data, edited the
way the web edits images. Two steps, as datatrove's decontamination: index the eval side, then match the shards
against it. The trainer skips the decisions' uids while streaming (`train.train --exclude`); no shard is rewritten.
In:  WebDataset shards (`--shards`: a folder, glob or brace pattern of `.tar`) and eval sets (`--eval NAME=PATH`,
     several; layouts in `pipeline/common/evalsets.py`).
Out: `--out`: `decisions.parquet` (each sample x eval image pair found, with distance, cosine, nearest, and the
     signal that found it: a hash signal of `phash.SIGNAL_ORDER`, `embedding` or `<hash signal>+embedding`),
     `dropped.parquet` (each sample that must go and its reason), `manifest.json` (drops per eval set and per
     signal), `cache/` (hashes, embeddings); optional `--out-shards`: the kept samples resharded, members copied
     byte for byte, with img2dataset's per-shard `NNNNN.parquet` and `NNNNN_stats.json`.
Decision: `eval_duplicate` when some hash signal pairs the sample with an eval image within that signal's threshold
     (DEFAULT_THRESHOLDS, or `--threshold` for all; `--signals` picks them), or (with `--embed-checkpoint`) at cosine
     >= `--embed-threshold`; `unreadable_image`/`decompression_bomb`/`missing_image` when it cannot be checked.
     Search: multi-index hashing (`mih.py`, exact), faiss above 8 bits; hashing on worker processes (`phash.py`),
     search here shard by shard. A corrupt shard contributes what was read before the damage (manifest).
Run: python -m pipeline.dedup --shards shards/NAME --eval cifar10=data/cifar10/test --out work/dedup \\
         [--threshold BITS] [--signals phash,flip,...] [--workers N] [--out-shards DIR] [--embed-checkpoint CKPT]
Numbers: thresholds (precision/recall per web edit on CIFAR-10), speeds: BENCHMARKS.md, "Stage 5: dedup".
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Iterable

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.common import files, rawtar
from pipeline.common.evalsets import EvalSet, EvalSetError, open_eval_sets
from pipeline.common.manifest import file_info, write_json_atomic, write_manifest
from pipeline.common.rawtar import iter_raw_samples
from pipeline.dedup import embed, mih, phash
from pipeline.common.logs import setup_logging

log = logging.getLogger(__name__)

STAGE = "dedup"
# bits per hash signal (phash.SIGNAL_ORDER), tuned on the first half of bench/bench_dedup.py's CIFAR-10 edits
# (`tune`: pooled precision >= 0.995, every single edit's recall >= 0.92, then the best pooled recall; the held-out
# half only reports). At 8 bits the whole-image hashes (phash, flip, frame) cost more precision than the recall they
# add over 6 bits; the crops and the re-framed centre pair each shard hash with 18 eval variants and take 6 too; the
# centre against the eval centre (overlay) and its rotations keep 8 (BENCHMARKS.md, dedup)
DEFAULT_THRESHOLDS = {"phash": 6, "flip": 6, "frame": 6, "crop": 6, "overlay": 8, "rotate": 8, "reframe": 6}
DEFAULT_EMBED_THRESHOLD = 0.998  # cosine; measured in bench/bench_dedup.py for its tiny encoder (module docstring)
SAMPLES_PER_SHARD = 10_000     # img2dataset's default number_sample_per_shard
EVAL_DUPLICATE = "eval_duplicate"
EMBEDDING = "embedding"        # decisions.signal of a pair only the embedding found (else a hash signal, +embedding)
SHARD_FILE = re.compile(r"^\d{5}(\.tar|\.parquet|_stats\.json)$")

DECISION_SCHEMA = pa.schema([("uid", pa.string()), ("key", pa.string()), ("shard", pa.string()),
                             ("eval_set", pa.string()), ("eval_image_id", pa.string()), ("eval_label", pa.int64()),
                             ("distance", pa.int32()), ("match", pa.string()), ("same_bytes", pa.bool_()),
                             ("nearest", pa.bool_()), ("signal", pa.string()), ("cosine", pa.float32())])
DROPPED_SCHEMA = pa.schema([("uid", pa.string()), ("key", pa.string()), ("shard", pa.string()),
                            ("reason", pa.string())])
OUT_SHARD_SCHEMA = pa.schema([("key", pa.string()), ("uid", pa.string()), ("url", pa.string()),
                              ("caption", pa.string()), ("source_shard", pa.string())])


# ---- step 1: index the eval side --------------------------------------------------------------------------

HASH_COLUMNS = ("phash", "phash_trimmed", "phash_centre")   # the shard cache's columns of phash.QUERY_KINDS
# signal code of each (shard hash kind, eval variant) pair; -1: that pair is not searched
SIGNAL_CODE = np.array([[phash.SIGNAL_ORDER.index(s) if (s := phash.signal_of(kind, v)) else -1
                         for v in range(len(phash.VARIANT_KINDS))] for kind in phash.QUERY_KINDS], dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class EvalIndex:
    """Every hashed eval image of every set (entry i: eval_set[i], image_id[i], ...) and exact Hamming indexes over
    their variant hashes (`phash.VARIANT_KINDS`), one per group of variant kinds searched alike (`index_variants`):
    `indexes[name]` is (the group's columns of `variants`, an index whose row r is column columns[r % len(columns)] of
    entry r // len(columns)).
    With the embedding signal on, `features` holds entry i's unit feature and `cosine_index` searches them."""
    indexes: dict[str, tuple[np.ndarray, mih.MultiIndexHash | faiss.IndexBinary]]
    eval_set: list[str]
    image_id: list[str]
    label: list[int]
    sha256: list[str]
    variants: np.ndarray            # (entries, n_variants) uint64
    features: np.ndarray | None = None
    cosine_index: faiss.IndexFlatIP | None = None


def build_binary_index(hashes: np.ndarray, threshold: int) -> mih.MultiIndexHash | faiss.IndexBinary:
    """An index over uint64 hashes that range-searches radius <= `threshold` with exact recall: multi-index hashing
    (pipeline/dedup/mih.py) up to 8 bits, faiss' linear scan above (more flips cost more than scanning the eval side)."""
    if threshold <= mih.MAX_RADIUS:
        return mih.MultiIndexHash(hashes, threshold)
    index = faiss.IndexBinaryFlat(64)
    index.add(phash.to_binary_codes(hashes))
    return index


def describe_index(index: mih.MultiIndexHash | faiss.IndexBinary) -> str:
    """The manifest's name of an index: its class, rows and (multi-index hashing) radius and piece widths."""
    if isinstance(index, mih.MultiIndexHash):
        return f"MultiIndexHash({index.ntotal} rows, r<={index.radius}, pieces {index.widths})"
    return f"{type(index).__name__}({index.ntotal} rows)"


def search_radius(query_kind: int, columns: np.ndarray, limit: np.ndarray) -> int:
    """The largest threshold among the signals that pair shard hash `query_kind` with these variant columns (-1: none
    is on); `limit` holds each signal's threshold in `phash.SIGNAL_ORDER` order (-1: off)."""
    codes = SIGNAL_CODE[query_kind][columns]
    return int(limit[codes[codes >= 0]].max(initial=-1))


def index_variants(variants: np.ndarray, thresholds: dict[str, int]
                   ) -> dict[str, tuple[np.ndarray, mih.MultiIndexHash | faiss.IndexBinary]]:
    """Exact indexes over the (entries, n_variants) hashes' columns, one per group of eval variant kinds that the same
    shard hashes search at the same radius (the largest threshold of the signals pairing them; "centre+rotate" by
    default), built for that radius; kinds no signal on searches get none. Searching each kind at its own signals'
    threshold (crops at 6 bits, not 8) and in its own smaller index costs a fraction of one search of every variant
    at the largest threshold (BENCHMARKS.md, dedup at ImageNet size)."""
    limit = np.array([thresholds.get(s, -1) for s in phash.SIGNAL_ORDER], dtype=np.int64)
    kinds = np.array(phash.VARIANT_KINDS)
    groups: dict[tuple[int, ...], list[str]] = {}
    for kind in dict.fromkeys(phash.VARIANT_KINDS):
        radii = tuple(search_radius(k, np.flatnonzero(kinds == kind), limit) for k in range(len(phash.QUERY_KINDS)))
        if max(radii) >= 0:
            groups.setdefault(radii, []).append(kind)
    out = {}
    for radii, group in groups.items():
        columns = np.flatnonzero(np.isin(kinds, group))
        out["+".join(group)] = (columns, build_binary_index(np.ascontiguousarray(variants[:, columns]).ravel(),
                                                            max(radii)))
    return out


def build_eval_index(tables: dict[str, pa.Table], thresholds: dict[str, int],
                     features: dict[str, dict[str, np.ndarray]] | None = None, dim: int = 0) -> EvalIndex:
    """The indexes over the variant hashes of the readable images of all eval sets for these per-signal thresholds
    (unreadable ones are left out and counted); with `features` ({set: {image_id: unit feature}}), a cosine index
    over the same entries as well."""
    cols: dict[str, list] = {"eval_set": [], "image_id": [], "label": [], "sha256": []}
    parts = []
    for name, table in tables.items():
        ok = table.filter(pc.equal(table["status"], phash.OK))
        cols["eval_set"] += [name] * ok.num_rows
        for c in ("image_id", "label", "sha256"):
            cols[c] += ok[c].to_pylist()
        # straight from arrow: a list of 2.2M Python ints (ImageNet x 44) would cost a second
        parts.append(pc.list_flatten(ok["variants"]).to_numpy().astype(np.uint64, copy=False))
    variants = np.concatenate(parts).reshape(-1, len(phash.VARIANT_KINDS))
    embedded = {}
    if features is not None:
        rows = np.concatenate([embed.stack([i for s, i in zip(cols["eval_set"], cols["image_id"]) if s == name],
                                           features[name], dim) for name in tables])
        embedded = {"features": rows, "cosine_index": embed.build_cosine_index(rows)}
    return EvalIndex(indexes=index_variants(variants, thresholds), variants=variants, **cols, **embedded)


def range_search(index: mih.MultiIndexHash | faiss.IndexBinary, hashes: np.ndarray,
                 threshold: int) -> tuple[np.ndarray, ...]:
    """(query row, index row, distance) of every pair with Hamming distance <= threshold."""
    if len(hashes) == 0 or index.ntotal == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    if isinstance(index, mih.MultiIndexHash):
        return index.range_search(hashes, threshold)
    lims, distances, ids = index.range_search(phash.to_binary_codes(hashes), threshold + 1)
    queries = np.repeat(np.arange(len(hashes)), np.diff(lims).astype(np.int64))
    return queries, ids.astype(np.int64), distances.astype(np.int64)


# ---- step 2: filter the shards -------------------------------------------------------------------------


def hash_pairs(rows: dict[str, list], eval_index: EvalIndex, thresholds: dict[str, int]) -> dict[tuple[int, int], tuple]:
    """(sample row, eval entry) -> (distance, signal) over every searched (shard hash, eval variant) pair
    (`phash.SIGNALS`) within its signal's threshold: the first signal of `phash.SIGNAL_ORDER` that found the pair
    (a plain copy is reported as `phash` even where its centre hashes happen to be closer), at its closest. Each shard
    hash searches each variant kind's index at the largest threshold of the signals pairing them, then each pair
    found is held to its own signal's threshold."""
    limit = np.array([thresholds.get(s, -1) for s in phash.SIGNAL_ORDER], dtype=np.int64)
    found = []   # (sample row, eval entry, signal code, distance) arrays
    for k, column in enumerate(HASH_COLUMNS):
        present = [(i, h) for i, h in enumerate(rows[column]) if h is not None]
        if not present:
            continue
        row_of = np.array([i for i, _ in present], dtype=np.int64)
        hashes = np.array([h for _, h in present], dtype=np.uint64)
        for columns, index in eval_index.indexes.values():
            radius = search_radius(k, columns, limit)
            if radius < 0:
                continue   # every signal of this (shard hash, variant kind) pair is off: not searched
            q, hit, dist = range_search(index, hashes, radius)
            code = SIGNAL_CODE[k][columns[hit % len(columns)]]
            keep = (code >= 0) & (dist <= limit[np.maximum(code, 0)])
            found.append((row_of[q[keep]], hit[keep] // len(columns), code[keep], dist[keep]))
    best: dict[tuple[int, int], tuple[int, int]] = {}
    for r, e, c, d in zip(*(np.concatenate(a).tolist() for a in zip(*found))) if found else ():
        best[(r, e)] = min(best.get((r, e), (c, d)), (c, d))
    return {pair: (d, phash.SIGNAL_ORDER[c]) for pair, (c, d) in best.items()}


def closest_distance(rows: dict[str, list], row: int, variants: np.ndarray, signals: Iterable[str]) -> int:
    """The smallest Hamming distance over the (shard hash, eval variant) pairs of the given signals of one sample
    and one eval image, whatever the thresholds (the distance reported for a pair only the embedding found)."""
    codes = [phash.SIGNAL_ORDER.index(s) for s in signals]
    return min((phash.hamming(int(rows[column][row]), int(variants[v]))
                for k, column in enumerate(HASH_COLUMNS) if rows[column][row] is not None
                for v in np.nonzero(np.isin(SIGNAL_CODE[k], codes))[0].tolist()))


def match_shard(table: pa.Table, shard: str, eval_index: EvalIndex, thresholds: dict[str, int],
                features: dict[str, np.ndarray] | None = None, embed_threshold: float = 1.0) -> list[dict]:
    """Decision rows for one shard's hash table: each (sample, eval image) pair that some hash signal finds within
    its threshold (`hash_pairs`) or, when the eval index has features and `features` (key -> unit feature) are
    given, at cosine >= embed_threshold.

    Every row has the pair's Hamming distance (the closest searched pair of hashes, also for pairs only the
    embedding found), the `signal` that found it (a hash signal, `embedding`, or `<hash signal>+embedding`) and,
    with the embedding signal on, the pair's cosine."""
    rows = table.filter(pc.equal(table["status"], phash.OK)).to_pydict()
    by_hash = hash_pairs(rows, eval_index, thresholds)
    by_embedding: set[tuple[int, int]] = set()
    vectors = None
    if eval_index.cosine_index is not None and features is not None:
        vectors = embed.stack(rows["key"], features, eval_index.features.shape[1])
        by_embedding = set(zip(*(a.tolist() for a in embed.cosine_pairs(eval_index.cosine_index, vectors,
                                                                        embed_threshold))))
    decisions = []
    for q, h in set(by_hash) | by_embedding:
        if (q, h) in by_hash:
            d, signal = by_hash[(q, h)]
            signal += f"+{EMBEDDING}" if (q, h) in by_embedding else ""
        else:
            d, signal = closest_distance(rows, q, eval_index.variants[h], thresholds or phash.SIGNAL_ORDER), EMBEDDING
        decisions.append({
            "uid": rows["uid"][q], "key": rows["key"][q], "shard": shard,
            "eval_set": eval_index.eval_set[h], "eval_image_id": eval_index.image_id[h],
            "eval_label": eval_index.label[h], "distance": d, "match": "exact" if d == 0 else "near",
            "same_bytes": rows["sha256"][q] == eval_index.sha256[h], "signal": signal,
            "cosine": None if vectors is None else round(float(vectors[q] @ eval_index.features[h]), 6)})
    mark_nearest(decisions)
    decisions.sort(key=lambda r: (r["key"], r["eval_set"], r["distance"], r["eval_image_id"]))
    return decisions


def mark_nearest(decisions: list[dict]) -> None:
    """Set `nearest` on each sample's closest eval image(s) per set: the smallest Hamming distance among the pairs
    a hash signal found (ties included); for a sample only the embedding found, the highest cosine."""
    def rank(r: dict) -> tuple:
        return (0, r["distance"]) if r["signal"] != EMBEDDING else (1, -r["cosine"])
    best: dict[tuple[str, str], tuple] = {}
    for r in decisions:
        k = (r["key"], r["eval_set"])
        best[k] = min(best.get(k, rank(r)), rank(r))
    for r in decisions:
        r["nearest"] = rank(r) == best[(r["key"], r["eval_set"])]


def signal_of_sample(decisions: Iterable[dict]) -> str:
    """The signal of a sample's drop: that of its nearest pair (the first of them by eval set and image id)."""
    return min((d for d in decisions if d["nearest"]), key=lambda d: (d["eval_set"], d["eval_image_id"]))["signal"]


def drop_reasons(table: pa.Table, decisions: Iterable[dict]) -> dict[str, str]:
    """key -> reason for every sample of a shard that must go (no image, or an eval duplicate)."""
    reasons = {k: s for k, s in zip(table["key"].to_pylist(), table["status"].to_pylist()) if s != phash.OK}
    for d in decisions:
        reasons.setdefault(d["key"], EVAL_DUPLICATE)
    return reasons


class ShardRewriter:
    """Writes kept samples into `NNNNN.tar` shards of `per_shard` samples, members copied byte for byte."""

    def __init__(self, out: str, per_shard: int):
        self.out, self.per_shard = out.rstrip("/"), per_shard
        self.shards: list[dict] = []
        self._tar: rawtar.TarWriter | None = None
        self._rows: list[dict] = []
        self._sources: set[str] = set()

    def _open(self) -> None:
        self._name = f"{len(self.shards):05d}"
        # open across add() calls until the shard is full, closed in _close(): no with-block fits. Written whole or
        # not at all (files.atomic_write: a renamed temp file locally, one committed upload on object stores)
        self._writing = files.atomic_write(files.join(self.out, f"{self._name}.tar"))
        self._tar = rawtar.TarWriter(self._writing.__enter__())

    def _close(self) -> None:
        self._tar.close()
        self._writing.__exit__(None, None, None)
        with files.atomic_write(files.join(self.out, f"{self._name}.parquet")) as f:
            pq.write_table(pa.Table.from_pylist(self._rows, schema=OUT_SHARD_SCHEMA), f)
        n = len(self._rows)
        stats = {"count": n, "successes": n, "failed_to_download": 0, "failed_to_resize": 0,
                 "source_shards": sorted(self._sources)}
        write_json_atomic(f"{self.out}/{self._name}_stats.json", stats)
        self.shards.append({"shard": f"{self._name}.tar", "samples": n})
        self._tar = None
        self._rows, self._sources = [], set()

    def add(self, members: list[rawtar.Member], meta: dict) -> None:
        if self._tar is None:
            self._open()
        for m in members:
            self._tar.add(m)
        self._rows.append(meta)
        self._sources.add(meta["source_shard"])
        if len(self._rows) == self.per_shard:
            self._close()

    def finish(self) -> list[dict]:
        if self._tar is not None:
            self._close()
        return self.shards


def sample_meta(key: str, members: list[rawtar.Member], source: str) -> dict:
    """The row of an output shard's parquet, from the sample's json (missing fields are null)."""
    meta: dict = {}
    for m in members:
        if rawtar.extension(m) == "json":
            try:
                meta = json.loads(m.data)
            except ValueError:
                meta = {}
    caption = meta.get("caption") if isinstance(meta, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    return {"key": key, "uid": str(meta.get("uid", key)), "url": meta.get("url"),
            "caption": caption if isinstance(caption, str) else None, "source_shard": files.name(source)}


def clear_shard_dir(out: str, inputs: list[str]) -> None:
    """Remove a previous run's numbered shard files from `out` (only those); refuse to write over the inputs."""
    root = files.filesystem(out)[1].rstrip("/")   # compared as the filesystem's paths: local ones absolute
    if any(files.parent(files.filesystem(s)[1]) == root for s in inputs):
        raise SystemExit(f"dedup: --out-shards {out} holds the input shards; choose another folder")
    files.makedirs(out)
    files.remove([p for p in files.find(files.join(out, "*")) if SHARD_FILE.match(files.name(p))])


# ---- the stage -------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.dedup", description=__doc__.split("\n")[0])
    p.add_argument("--shards", required=True, help="folder, glob or brace pattern of WebDataset .tar shards")
    p.add_argument("--eval", action="append", required=True, metavar="NAME=PATH",
                   help="an eval set (ImageFolder dir, .tar/.tgz WebDataset with .cls, or MNIST-style .csv[.gz]); repeat")
    p.add_argument("--classnames", action="append", default=[], metavar="NAME=FILE|a,b,c",
                   help="class names of eval set NAME (default: a classnames.json/yaml/txt beside the set)")
    p.add_argument("--out", required=True, help="decisions, manifest and hash cache go here (e.g. work/dedup)")
    p.add_argument("--out-shards", help="also write the kept samples as new shards here (default: none; the trainer "
                                        "drops the decisions' uids with --exclude)")
    p.add_argument("--threshold", type=int,
                   help="max Hamming distance (bits of 64) of a near-duplicate, for every hash signal (default: per "
                        "signal, " + ", ".join(f"{k} {v}" for k, v in DEFAULT_THRESHOLDS.items()) + ")")
    p.add_argument("--signals", default=",".join(phash.SIGNAL_ORDER),
                   help="hash signals to use, comma-separated (default: all of " + ",".join(phash.SIGNAL_ORDER) + ")")
    p.add_argument("--samples-per-shard", type=int, default=SAMPLES_PER_SHARD,
                   help=f"samples per output shard (default {SAMPLES_PER_SHARD:,}, img2dataset's)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="hashing processes (1 = in-process)")
    p.add_argument("--no-draft", dest="draft", action="store_false",
                   help="decode JPEGs fully before hashing (~4x slower; the default decodes at 1/2-1/8 scale)")
    p.add_argument("--embed-checkpoint", metavar="PATH",
                   help="second signal: also drop samples whose image embedding (the image encoder of this "
                        "checkpoint: ours, open_clip's or OpenAI's) has cosine >= --embed-threshold with an eval "
                        "image's (default: off)")
    p.add_argument("--embed-model", metavar="NAME|JSON",
                   help="architecture of an --embed-checkpoint that carries none (ViT-B-32, an open_clip config)")
    p.add_argument("--embed-threshold", type=float, default=DEFAULT_EMBED_THRESHOLD, metavar="COS",
                   help=f"min cosine similarity of an embedding near-duplicate (default {DEFAULT_EMBED_THRESHOLD})")
    p.add_argument("--embed-device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where the encoder runs (default: cuda if available)")
    args = p.parse_args(argv)
    if args.threshold is not None and not 0 <= args.threshold <= 32:
        p.error("--threshold must be between 0 and 32 bits")
    signals = [x for x in args.signals.split(",") if x]
    unknown = sorted(set(signals) - set(phash.SIGNAL_ORDER))
    if unknown:
        p.error(f"--signals: unknown {', '.join(unknown)} (known: {', '.join(phash.SIGNAL_ORDER)})")
    args.thresholds = {k: DEFAULT_THRESHOLDS[k] if args.threshold is None else args.threshold
                       for k in phash.SIGNAL_ORDER if k in signals}
    if not -1.0 <= args.embed_threshold <= 1.0:
        p.error("--embed-threshold must be a cosine between -1 and 1")
    if args.samples_per_shard < 1:
        p.error("--samples-per-shard must be >= 1")
    return args


def run(argv: list[str] | None = None) -> dict:
    """Run the stage; returns the manifest. SystemExit('dedup: ...') on bad input."""
    args = parse_args(argv)
    started = time.time()
    cache = files.join(args.out, "cache")
    try:
        eval_sets = open_eval_sets(args.eval, args.classnames)
        shards = files.expand(args.shards, ".tar")
        eval_tables = {s.name: phash.eval_hashes(s, cache, args.workers, args.draft) for s in eval_sets}
        for name, table in eval_tables.items():
            if phash.OK not in table["status"].to_pylist():
                raise EvalSetError(f"{name}: none of its {table.num_rows} images could be decoded")
        encoder = (embed.load_encoder(args.embed_checkpoint, args.embed_device, args.embed_model)
                   if args.embed_checkpoint else None)
        if args.out_shards:
            clear_shard_dir(args.out_shards, shards)   # only once the inputs are known to be usable
    except (EvalSetError, embed.CheckpointError, files.NoFilesError) as e:
        raise SystemExit(f"dedup: {e}") from None
    eval_features = None
    if encoder is not None:
        eval_features = {s.name: embed.eval_features(s, encoder, cache) for s in eval_sets}
    eval_index = build_eval_index(eval_tables, args.thresholds, eval_features, encoder.dim if encoder else 0)
    log.info("indexed %d eval images from %d set(s) as %d hashes%s", len(eval_index.image_id), len(eval_sets),
             sum(index.ntotal for _, index in eval_index.indexes.values()),
             f", embedding signal on (cosine >= {args.embed_threshold})" if encoder else "")

    decisions, dropped, shard_errors = [], [], {}
    rejected: collections.Counter = collections.Counter()
    read = 0
    writer = ShardRewriter(args.out_shards, args.samples_per_shard) if args.out_shards else None
    hashed = phash.parallel_map(phash.shard_hashes, shards, args.workers, desc="dedup shards", total=len(shards),
                                cache_dir=cache, draft=args.draft)
    for shard, (table, error) in zip(shards, hashed):
        if error:
            shard_errors[shard] = error
        features = embed.shard_features(shard, encoder, cache) if encoder is not None else None
        shard_decisions = match_shard(table, shard, eval_index, args.thresholds, features, args.embed_threshold)
        reasons = drop_reasons(table, shard_decisions)
        uids = dict(zip(table["key"].to_pylist(), table["uid"].to_pylist()))
        decisions += shard_decisions
        dropped += [{"uid": uids[k], "key": k, "shard": shard, "reason": r} for k, r in sorted(reasons.items())]
        rejected.update(reasons.values())
        read += table.num_rows
        if writer is None:
            continue
        for key, members in iter_raw_samples(shard):
            if key in uids and key not in reasons:   # samples past a corrupt tail were never hashed: not copied
                writer.add(members, sample_meta(key, members, shard))
    out_shards = writer.finish() if writer else None
    kept = read - sum(rejected.values())
    embedding_settings = {"embed_checkpoint": None}
    if encoder is not None:
        embedding_settings = {"embed_checkpoint": encoder.path, "embed_checkpoint_sha256": encoder.sha256,
                              "embed_model": args.embed_model,
                              "embed_threshold": args.embed_threshold, "embed_image_size": encoder.image_size,
                              "embed_dim": encoder.dim, "embed_version": embed.EMBED_VERSION}
    files.makedirs(args.out)
    for name, rows, schema in (("decisions", decisions, DECISION_SCHEMA), ("dropped", dropped, DROPPED_SCHEMA)):
        with files.atomic_write(files.join(args.out, f"{name}.parquet")) as f:
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), f)
    return write_manifest(
        args.out, stage=STAGE,
        settings={"threshold": max(args.thresholds.values(), default=None), "thresholds": args.thresholds,
                  "draft": args.draft, "draft_size": phash.DRAFT_SIZE,
                  "hash": f"imagehash.phash 64-bit v{phash.HASH_VERSION}", "samples_per_shard": args.samples_per_shard,
                  "workers": args.workers, "index": {kind: describe_index(index) for kind, (_, index) in
                                                      eval_index.indexes.items()}, "out_shards": args.out_shards,
                  **embedding_settings},
        inputs=[file_info(s, checksum=False) for s in shards] +
               [{"eval_set": s.name, "path": s.path, "layout": s.layout} for s in eval_sets],
        counters={"read": read, "kept": kept, "rejected": dict(sorted(rejected.items()))},
        wall_time_s=time.time() - started,
        extra={"eval_sets": eval_summary(eval_sets, eval_tables, decisions),
               "dropped_per_eval_set": dropped_per_set(eval_sets, decisions),
               "dropped_per_signal": dropped_per_signal(decisions),
               "shard_errors": shard_errors, "out_shards": out_shards})


def eval_summary(eval_sets: list[EvalSet], tables: dict[str, pa.Table], decisions: list[dict]) -> dict:
    """Per eval set: images, hashed, unreadable, images that are some training sample's nearest match (see
    `pipeline.overlap`), class names and templates."""
    matched = collections.defaultdict(set)
    for d in decisions:
        if d["nearest"]:
            matched[d["eval_set"]].add(d["eval_image_id"])
    summary = {}
    for s in eval_sets:
        status = collections.Counter(tables[s.name]["status"].to_pylist())
        summary[s.name] = {"path": s.path, "layout": s.layout, "images": tables[s.name].num_rows,
                           "hashed": status[phash.OK], "unreadable": {k: v for k, v in status.items() if k != phash.OK},
                           "images_with_training_duplicate": len(matched[s.name]),
                           "classnames": list(s.classnames), "templates": list(s.templates)}
    return summary


def dropped_per_set(eval_sets: list[EvalSet], decisions: list[dict]) -> dict:
    """Per eval set: how many training samples it caused to drop, their uids (a sample may count in several sets),
    and how many by each signal (the signal of the sample's nearest image of that set)."""
    uids = collections.defaultdict(set)
    by_sample = collections.defaultdict(list)
    for d in decisions:
        uids[d["eval_set"]].add(d["uid"])
        by_sample[(d["eval_set"], d["shard"], d["key"])].append(d)
    signals = {s.name: collections.Counter() for s in eval_sets}
    for (name, _, _), ds in by_sample.items():
        signals[name][signal_of_sample(ds)] += 1
    return {s.name: {"samples": len(uids[s.name]), "uids": sorted(uids[s.name]),
                     "per_signal": dict(sorted(signals[s.name].items()))} for s in eval_sets}


def dropped_per_signal(decisions: list[dict]) -> dict:
    """Dropped samples per signal (the signal of the sample's nearest eval image over all sets)."""
    by_sample = collections.defaultdict(list)
    for d in decisions:
        by_sample[(d["shard"], d["key"])].append(d)
    return dict(sorted(collections.Counter(signal_of_sample(ds) for ds in by_sample.values()).items()))


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    manifest = run(argv)
    c = manifest["counters"]
    log.info("dedup: read %d, kept %d, rejected %s -> %s", c["read"], c["kept"], c["rejected"],
             manifest["settings"]["out_shards"] or "decisions only (no shards rewritten)")


if __name__ == "__main__":
    main()
