"""Stage 5 (`make dedup`): remove near-duplicates of evaluation images from the training shards.

Paper: CLIP (Radford et al. 2021, section 5 and appendix C) found copies of eval images in web data. Two steps,
as datatrove's decontamination: index the eval side, then filter the shards against that index.
In:  WebDataset shards (`--shards`: a folder, glob or brace pattern of `.tar`) and eval sets (`--eval NAME=PATH`,
     several; layouts in `pipeline/common/evalsets.py`).
Out: `--out`: `decisions.parquet` (each sample x eval image pair found, with distance, cosine, signal, nearest),
     `dropped.parquet` (each dropped sample and its reason), `manifest.json`, `cache/` (hashes, embeddings);
     `--out-shards`: the kept samples resharded, members copied byte for byte, with img2dataset's per-shard
     `NNNNN.parquet` and `NNNNN_stats.json`.
Decision: dropped as `eval_duplicate` when its 64-bit pHash, or that of the picture inside its uniform frame
     (`phash.trimmed_phash`), is within `--threshold` bits of an eval image's, or (with `--embed-checkpoint`) its
     embedding has cosine >= `--embed-threshold` with one; `unreadable_image`/`decompression_bomb`/`missing_image`
     when it cannot be checked. Search: multi-index hashing (`mih.py`, exact) up to 8 bits, faiss above; hashing
     on worker processes (`phash.py`), search and rewrite here shard by shard (memory: one shard's hashes). A
     corrupt shard contributes what was read before the damage and is listed in the manifest.
Run: python -m pipeline.dedup --shards shards/NAME --eval cifar10=data/cifar10/test --out work/dedup \\
         --out-shards shards/NAME-dedup [--threshold 8] [--workers N] [--embed-checkpoint CKPT]
Numbers: how the thresholds were chosen (precision/recall per transform), speeds: BENCHMARKS.md, "Stage 5: dedup".
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
import fsspec
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
# Both thresholds: the best recall on resize+recompress at precision >= 0.99 in bench/bench_dedup.py (tables in
# BENCHMARKS.md). pHash distances are nearly always even, so 8 and 9 behave alike; the false positives left at 8
# bits are mostly real duplicates inside CIFAR-10's test set (Barz & Denzler 2020). The cosine scale belongs to
# the encoder (0.998 is for the bench's tiny CLIP): calibrate it per checkpoint with bench_dedup --embed-checkpoint.
DEFAULT_THRESHOLD = 8          # bits of 64
DEFAULT_EMBED_THRESHOLD = 0.998  # cosine, for the bench's tiny encoder
SAMPLES_PER_SHARD = 10_000     # img2dataset's default number_sample_per_shard
EVAL_DUPLICATE = "eval_duplicate"
PHASH, EMBEDDING, BOTH = "phash", "embedding", "both"   # which signal found a pair (decisions.signal)
SHARD_FILE = re.compile(r"^\d{5}(\.tar|\.parquet|_stats\.json)$")

DECISION_SCHEMA = pa.schema([("uid", pa.string()), ("key", pa.string()), ("shard", pa.string()),
                             ("eval_set", pa.string()), ("eval_image_id", pa.string()), ("eval_label", pa.int64()),
                             ("distance", pa.int32()), ("match", pa.string()), ("same_bytes", pa.bool_()),
                             ("nearest", pa.bool_()), ("signal", pa.string()), ("cosine", pa.float32()),
                             ("trimmed", pa.bool_())])
DROPPED_SCHEMA = pa.schema([("uid", pa.string()), ("key", pa.string()), ("shard", pa.string()),
                            ("reason", pa.string())])
OUT_SHARD_SCHEMA = pa.schema([("key", pa.string()), ("uid", pa.string()), ("url", pa.string()),
                              ("caption", pa.string()), ("source_shard", pa.string())])


# ---- step 1: index the eval side --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class EvalIndex:
    """Every hashed eval image of every set, in one faiss index; row i of the index is entry i here.
    With the embedding signal on, `features` holds row i's unit feature and `cosine_index` searches them."""
    index: mih.MultiIndexHash | faiss.IndexBinary
    eval_set: list[str]
    image_id: list[str]
    label: list[int]
    sha256: list[str]
    hashes: np.ndarray
    features: np.ndarray | None = None
    cosine_index: faiss.IndexFlatIP | None = None


def build_binary_index(hashes: np.ndarray, threshold: int) -> mih.MultiIndexHash | faiss.IndexBinary:
    """An index over uint64 hashes that range-searches radius `threshold` with exact recall: multi-index hashing
    (pipeline/dedup/mih.py) up to 8 bits, faiss' linear scan above (more flips cost more than scanning the eval side)."""
    if threshold <= mih.MAX_RADIUS:
        return mih.MultiIndexHash(hashes, threshold)
    index = faiss.IndexBinaryFlat(64)
    index.add(phash.to_binary_codes(hashes))
    return index


def build_eval_index(tables: dict[str, pa.Table], threshold: int,
                     features: dict[str, dict[str, np.ndarray]] | None = None, dim: int = 0) -> EvalIndex:
    """One index over the hashed images of all eval sets (unreadable eval images are left out and counted);
    with `features` ({set: {image_id: unit feature}}), a cosine index over the same rows as well."""
    cols: dict[str, list] = {"eval_set": [], "image_id": [], "label": [], "sha256": [], "phash": []}
    for name, table in tables.items():
        ok = table.filter(pc.equal(table["status"], phash.OK)).to_pydict()
        cols["eval_set"] += [name] * len(ok["image_id"])
        for c in ("image_id", "label", "sha256", "phash"):
            cols[c] += ok[c]
    hashes = np.array(cols.pop("phash"), dtype=np.uint64)
    embedded = {}
    if features is not None:
        rows = np.concatenate([embed.stack([i for s, i in zip(cols["eval_set"], cols["image_id"]) if s == name],
                                           features[name], dim) for name in tables])
        embedded = {"features": rows, "cosine_index": embed.build_cosine_index(rows)}
    return EvalIndex(index=build_binary_index(hashes, threshold), hashes=hashes, **cols, **embedded)


def range_search(index: mih.MultiIndexHash | faiss.IndexBinary, hashes: np.ndarray,
                 threshold: int) -> tuple[np.ndarray, ...]:
    """(query row, index row, distance) of every pair with Hamming distance <= threshold."""
    if len(hashes) == 0 or index.ntotal == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    if isinstance(index, mih.MultiIndexHash):
        return index.range_search(hashes)
    lims, distances, ids = index.range_search(phash.to_binary_codes(hashes), threshold + 1)
    queries = np.repeat(np.arange(len(hashes)), np.diff(lims).astype(np.int64))
    return queries, ids.astype(np.int64), distances.astype(np.int64)


# ---- step 2: filter the shards -------------------------------------------------------------------------

def match_shard(table: pa.Table, shard: str, eval_index: EvalIndex, threshold: int, border_hash: bool = True,
                features: dict[str, np.ndarray] | None = None, embed_threshold: float = 1.0) -> list[dict]:
    """Decision rows for one shard's hash table: each (sample, eval image) pair within the pHash threshold (by the
    sample's pHash or, with `border_hash`, by the pHash inside its uniform frame) or, when the eval index has
    features and `features` (key -> unit feature) are given, at cosine >= embed_threshold.

    Every row has the pair's Hamming distance, the smaller of the two hashes' (also for pairs only the embedding
    found), `trimmed` when the frame-trimmed hash gave it, and with the embedding signal on the pair's cosine;
    `signal` says which test(s) the pair passed.
    """
    rows = table.filter(pc.equal(table["status"], phash.OK)).to_pydict()
    hashes = np.array(rows["phash"], dtype=np.uint64)
    framed = [i for i, t in enumerate(rows["phash_trimmed"]) if t is not None] if border_hash else []
    trimmed = {i: int(rows["phash_trimmed"][i]) for i in framed}
    queries, hits, _ = range_search(eval_index.index, np.concatenate(
        [hashes, np.array([trimmed[i] for i in framed], dtype=np.uint64)]), threshold)
    row_of = np.array(list(range(len(hashes))) + framed, dtype=np.int64)
    by_phash = set(zip(row_of[queries].tolist(), hits.tolist()))
    by_embedding: set[tuple[int, int]] = set()
    vectors = None
    if eval_index.cosine_index is not None and features is not None:
        vectors = embed.stack(rows["key"], features, eval_index.features.shape[1])
        by_embedding = set(zip(*(a.tolist() for a in embed.cosine_pairs(eval_index.cosine_index, vectors,
                                                                        embed_threshold))))
    decisions = []
    for q, h in by_phash | by_embedding:
        plain = phash.hamming(int(hashes[q]), int(eval_index.hashes[h]))
        d = min(plain, phash.hamming(trimmed[q], int(eval_index.hashes[h]))) if q in trimmed else plain
        decisions.append({
            "uid": rows["uid"][q], "key": rows["key"][q], "shard": shard,
            "eval_set": eval_index.eval_set[h], "eval_image_id": eval_index.image_id[h],
            "eval_label": eval_index.label[h], "distance": d, "match": "exact" if d == 0 else "near",
            "same_bytes": rows["sha256"][q] == eval_index.sha256[h], "trimmed": d < plain,
            "signal": BOTH if (q, h) in by_phash and (q, h) in by_embedding else PHASH if (q, h) in by_phash else EMBEDDING,
            "cosine": None if vectors is None else round(float(vectors[q] @ eval_index.features[h]), 6)})
    mark_nearest(decisions)
    decisions.sort(key=lambda r: (r["key"], r["eval_set"], r["distance"], r["eval_image_id"]))
    return decisions


def mark_nearest(decisions: list[dict]) -> None:
    """Set `nearest` on each sample's closest eval image(s) per set: the smallest Hamming distance among the pairs
    pHash found (ties included, as before the embedding signal existed); for a sample only the embedding found,
    the highest cosine."""
    def rank(r: dict) -> tuple:
        return (0, r["distance"]) if r["signal"] != EMBEDDING else (1, -r["cosine"])
    best: dict[tuple[str, str], tuple] = {}
    for r in decisions:
        k = (r["key"], r["eval_set"])
        best[k] = min(best.get(k, rank(r)), rank(r))
    for r in decisions:
        r["nearest"] = rank(r) == best[(r["key"], r["eval_set"])]


def signal_of_sample(decisions: Iterable[dict]) -> str:
    """phash, embedding or both: which signal(s) found at least one of a sample's pairs."""
    signals = {s for d in decisions for s in ((PHASH, EMBEDDING) if d["signal"] == BOTH else (d["signal"],))}
    return BOTH if len(signals) == 2 else signals.pop()


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
        self.fs, self.root = fsspec.core.url_to_fs(self.out)
        self.shards: list[dict] = []
        self._tar: rawtar.TarWriter | None = None
        self._rows: list[dict] = []
        self._sources: set[str] = set()

    def _open(self) -> None:
        self._name = f"{len(self.shards):05d}"
        # open across add() calls until the shard is full, closed in _close(): no with-block fits
        self._file = self.fs.open(f"{self.root}/{self._name}.tar.tmp", "wb")
        self._tar = rawtar.TarWriter(self._file)

    def _close(self) -> None:
        self._tar.close()
        self._file.close()
        self.fs.mv(f"{self.root}/{self._name}.tar.tmp", f"{self.root}/{self._name}.tar")
        pq.write_table(pa.Table.from_pylist(self._rows, schema=OUT_SHARD_SCHEMA),
                       f"{self.root}/{self._name}.parquet", filesystem=self.fs)
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
            "caption": caption if isinstance(caption, str) else None, "source_shard": os.path.basename(source)}


def clear_shard_dir(out: str, inputs: list[str]) -> None:
    """Remove a previous run's numbered shard files from `out` (only those); refuse to write over the inputs."""
    fs, root = fsspec.core.url_to_fs(out)
    if any(os.path.dirname(fsspec.core.url_to_fs(s)[1]) == root.rstrip("/") for s in inputs):
        raise SystemExit(f"dedup: --out-shards {out} holds the input shards; choose another folder")
    fs.makedirs(root, exist_ok=True)
    for p in fs.ls(root, detail=False):
        if SHARD_FILE.match(os.path.basename(p)):
            fs.rm(p)


# ---- the stage -------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.dedup", description=__doc__.split("\n")[0])
    p.add_argument("--shards", required=True, help="folder, glob or brace pattern of WebDataset .tar shards")
    p.add_argument("--eval", action="append", required=True, metavar="NAME=PATH",
                   help="an eval set (ImageFolder dir, .tar/.tgz WebDataset with .cls, or MNIST-style .csv[.gz]); repeat")
    p.add_argument("--classnames", action="append", default=[], metavar="NAME=FILE|a,b,c",
                   help="class names of eval set NAME (default: a classnames.json/yaml/txt beside the set)")
    p.add_argument("--out", required=True, help="decisions, manifest and hash cache go here (e.g. work/dedup)")
    p.add_argument("--out-shards", required=True, help="filtered shards go here (e.g. shards/NAME-dedup)")
    p.add_argument("--threshold", type=int, default=DEFAULT_THRESHOLD,
                   help=f"max Hamming distance (bits of 64) of a near-duplicate (default {DEFAULT_THRESHOLD})")
    p.add_argument("--samples-per-shard", type=int, default=SAMPLES_PER_SHARD,
                   help=f"samples per output shard (default {SAMPLES_PER_SHARD:,}, img2dataset's)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="hashing processes (1 = in-process)")
    p.add_argument("--no-draft", dest="draft", action="store_false",
                   help="decode JPEGs fully before hashing (~4x slower; the default decodes at 1/2-1/8 scale)")
    p.add_argument("--no-border-hash", dest="border_hash", action="store_false",
                   help="search only each shard image's pHash, not also the pHash inside its uniform frame")
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
    if not 0 <= args.threshold <= 32:
        p.error("--threshold must be between 0 and 32 bits")
    if not -1.0 <= args.embed_threshold <= 1.0:
        p.error("--embed-threshold must be a cosine between -1 and 1")
    if args.samples_per_shard < 1:
        p.error("--samples-per-shard must be >= 1")
    return args


def run(argv: list[str] | None = None) -> dict:
    """Run the stage; returns the manifest. SystemExit('dedup: ...') on bad input."""
    args = parse_args(argv)
    started = time.time()
    cache = os.path.join(args.out, "cache")
    try:
        eval_sets = open_eval_sets(args.eval, args.classnames)
        shards = files.expand(args.shards, ".tar")
        eval_tables = {s.name: phash.eval_hashes(s, cache, args.workers, args.draft) for s in eval_sets}
        for name, table in eval_tables.items():
            if phash.OK not in table["status"].to_pylist():
                raise EvalSetError(f"{name}: none of its {table.num_rows} images could be decoded")
        encoder = (embed.load_encoder(args.embed_checkpoint, args.embed_device, args.embed_model)
                   if args.embed_checkpoint else None)
        clear_shard_dir(args.out_shards, shards)   # only once the inputs are known to be usable
    except (EvalSetError, embed.CheckpointError, files.NoFilesError) as e:
        raise SystemExit(f"dedup: {e}") from None
    eval_features = None
    if encoder is not None:
        eval_features = {s.name: embed.eval_features(s, encoder, cache) for s in eval_sets}
    eval_index = build_eval_index(eval_tables, args.threshold, eval_features, encoder.dim if encoder else 0)
    log.info("indexed %d eval images from %d set(s)%s", eval_index.index.ntotal, len(eval_sets),
             f", embedding signal on (cosine >= {args.embed_threshold})" if encoder else "")

    decisions, dropped, shard_errors = [], [], {}
    rejected: collections.Counter = collections.Counter()
    read = 0
    writer = ShardRewriter(args.out_shards, args.samples_per_shard)
    hashed = phash.parallel_map(phash.shard_hashes, shards, args.workers, desc="dedup shards", total=len(shards),
                                cache_dir=cache, draft=args.draft)
    for shard, (table, error) in zip(shards, hashed):
        if error:
            shard_errors[shard] = error
        features = embed.shard_features(shard, encoder, cache) if encoder is not None else None
        shard_decisions = match_shard(table, shard, eval_index, args.threshold, args.border_hash, features,
                                      args.embed_threshold)
        reasons = drop_reasons(table, shard_decisions)
        uids = dict(zip(table["key"].to_pylist(), table["uid"].to_pylist()))
        decisions += shard_decisions
        dropped += [{"uid": uids[k], "key": k, "shard": shard, "reason": r} for k, r in sorted(reasons.items())]
        rejected.update(reasons.values())
        read += table.num_rows
        for key, members in iter_raw_samples(shard):
            if key in uids and key not in reasons:   # samples past a corrupt tail were never hashed: not copied
                writer.add(members, sample_meta(key, members, shard))
    out_shards = writer.finish()
    kept = sum(s["samples"] for s in out_shards)

    by_sample = collections.defaultdict(list)
    for d in decisions:
        by_sample[(d["shard"], d["key"])].append(d)
    per_signal = collections.Counter(signal_of_sample(ds) for ds in by_sample.values())
    embedding_settings = {"embed_checkpoint": None}
    if encoder is not None:
        embedding_settings = {"embed_checkpoint": encoder.path, "embed_checkpoint_sha256": encoder.sha256,
                              "embed_model": args.embed_model,
                              "embed_threshold": args.embed_threshold, "embed_image_size": encoder.image_size,
                              "embed_dim": encoder.dim, "embed_version": embed.EMBED_VERSION}
    os.makedirs(args.out, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(decisions, schema=DECISION_SCHEMA), os.path.join(args.out, "decisions.parquet"))
    pq.write_table(pa.Table.from_pylist(dropped, schema=DROPPED_SCHEMA), os.path.join(args.out, "dropped.parquet"))
    return write_manifest(
        args.out, stage=STAGE,
        settings={"threshold": args.threshold, "border_hash": args.border_hash, "draft": args.draft, "draft_size": phash.DRAFT_SIZE,
                  "hash": f"imagehash.phash 64-bit v{phash.HASH_VERSION}", "samples_per_shard": args.samples_per_shard,
                  "workers": args.workers, "index": type(eval_index.index).__name__, "out_shards": args.out_shards,
                  **embedding_settings},
        inputs=[file_info(s, checksum=False) for s in shards] +
               [{"eval_set": s.name, "path": s.path, "layout": s.layout} for s in eval_sets],
        counters={"read": read, "kept": kept, "rejected": dict(sorted(rejected.items()))},
        wall_time_s=time.time() - started,
        extra={"eval_sets": eval_summary(eval_sets, eval_tables, decisions),
               "dropped_per_eval_set": dropped_per_set(eval_sets, decisions),
               "dropped_per_signal": {k: per_signal[k] for k in (PHASH, EMBEDDING, BOTH)},
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
    """Per eval set: how many training samples it caused to drop, and their uids (a sample may count in several)."""
    uids = collections.defaultdict(set)
    for d in decisions:
        uids[d["eval_set"]].add(d["uid"])
    return {s.name: {"samples": len(uids[s.name]), "uids": sorted(uids[s.name])} for s in eval_sets}


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    manifest = run(argv)
    c = manifest["counters"]
    log.info("dedup: read %d, kept %d, rejected %s -> %s", c["read"], c["kept"], c["rejected"],
             manifest["settings"]["out_shards"])


if __name__ == "__main__":
    main()
