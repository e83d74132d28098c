"""Stage 3, `balance`: cap the pairs per query so the head does not drown the tail (MetaCLIP balancing).

In:  `<matched>/part-*.parquet` (`uid, url, caption, query_ids`) and `<matched>/query_counts.tsv` from `match`.
Out: `<out>/part-KKKKK-of-NNNNN.parquet` (`url, caption, uid, query_ids`: img2dataset input), sorted by uid,
     about `--rows-per-file` rows each; `entry_counts.tsv` (`query_id, query, before, after`), `stats.json`,
     `entry_counts.png`; `rejected/part-*.parquet` (`uid, reason`) for the dropped pairs; `manifest.json`.
Recipe: `metaclip` (default; Xu et al. 2023, "Demystifying CLIP Data", Alg. 1): entry e gets p_e = min(1, t/c_e)
     and a pair is kept iff some entry's seeded draw `unit_hash(seed, uid, e) < p_e` (tail pairs always). `strict`
     (CLIP's "up to 20,000 pairs per query" read literally): no entry in more than t kept pairs. The counts c_e are
     recounted from the matched pairs; the draws are hashes, so reruns and any worker count keep the same pairs.
     Why, and what each mode costs: the comment above MODES.
Run:  python -m pipeline.balance --matched work/matched --out work/balanced [--t 20000] [--seed 0]
          [--mode metaclip|strict] [--rows-per-file N] [Beam options]     (or `make balance T=20000`)
Numbers (pairs/s, C draws vs Python): BENCHMARKS.md, "Stage 2: match" (balance rows).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import logging
import sys
import time
from typing import Any, Iterable

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.common import beamio, files
from pipeline.common.beamrun import counter, pipeline_options, read_counters
from pipeline.common.manifest import write_json_atomic, write_manifest
from pipeline.common.records import MATCHED_COLUMNS, text_lines
from pipeline.common.logs import setup_logging

STAGE = "balance"
T = 20_000  # MetaCLIP 400M (and CLIP's "up to 20,000 (image, text) pairs per query")

# Modes (counts c_e are recounted from the matched pairs themselves, so they always agree with the data):
# - `metaclip` (default; Xu et al. 2023, "Demystifying CLIP Data", Alg. 1): entry e gets p_e = min(1, t / c_e);
#   a pair matched to entries E is kept iff for some e in E, `unit_hash(seed, uid, e) < p_e`, i.e. with
#   probability 1 - prod_e (1 - p_e). Every pair that contains a tail entry (c_e <= t) is kept. The draws are
#   seeded hashes of (seed, uid, entry), not a random stream: reruns, retried bundles and any worker count
#   keep exactly the same pairs. Each entry's own draws keep min(c_e, t) pairs in expectation, but a head
#   entry can end above t through pairs kept for a co-occurring tail entry (stats.json: `entries_over_t_after`).
# - `strict` (CLIP's "up to 20,000 pairs per query" read literally: no entry is in more than t kept pairs).
#   Pairs are ranked by one global key, (count of the pair's rarest entry, unit_hash(seed, uid), uid), so a
#   pair carrying a rare entry comes first in every list it is on. For each head entry (c_e > t) the key of
#   its t-th pair is its threshold; a pair is kept iff its key is within the threshold of every head entry it
#   contains. Each entry therefore keeps at most t pairs (only pairs in its own top t can be kept). The cost
#   is borne by the tail: a tail pair that co-occurs with a head entry is lost when it falls outside that
#   entry's top t; stats.json reports `tail_matches_kept_fraction` (1.0 in metaclip mode) so the cost is
#   measured on every run. Ranking by rarity (not a plain hash) makes the head budgets go to tail pairs first.
#   Measured on CC3M validation (15,774 matched pairs, the 411,860-entry bench list, t = 300): metaclip keeps
#   15,773 pairs, strict keeps 942 (tail matches kept: 6.9%), because entries such as "a" or "of" occur in
#   most captions and their cap binds every pair they are in. Strict mode suits query lists without such
#   function words; metaclip mode is the published recipe and the default.

MODES = ("metaclip", "strict")
ROWS_PER_FILE = 1_000_000  # ~100 MB of zstd parquet per file: few files, each small enough for one worker
BALANCED_OUT = "balanced_out"  # reject reason: the pair lost the balancing draw / was over a cap
NO_QUERY_IDS = "no_query_ids"
MALFORMED_QUERY_IDS = "malformed_query_ids"  # a null id inside the list (a damaged file; match never writes one)
EXPECTED_SCALE = 1_000_000  # expected kept size is summed in integer millionths: exact and order-independent

BALANCED_SCHEMA = pa.schema([("url", pa.string()), ("caption", pa.string()), ("uid", pa.string()),
                             ("query_ids", pa.list_(pa.int32()))])
REJECTED_SCHEMA = pa.schema([("uid", pa.string()), ("reason", pa.string())])

log = logging.getLogger(__name__)

# ---- pure core ----------------------------------------------------------------------------------------

def keep_probability(count: int, t: int) -> float:
    """MetaCLIP's per-entry sampling probability min(1, t / count)."""
    return 1.0 if count <= t else t / count


def unit_hash(*parts: Any) -> float:
    """A number in [0, 1) from the parts: the same on every worker and retry (blake2b, not hash())."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def pair_keep_probability(query_ids: Iterable[int], counts: dict[int, int], t: int) -> float:
    """1 - prod_e (1 - p_e): the probability that metaclip mode keeps a pair matched to these entries."""
    miss = 1.0
    for qid in query_ids:
        miss *= 1.0 - keep_probability(counts[qid], t)
    return 1.0 - miss


def metaclip_keep(uid: str, query_ids: Iterable[int], counts: dict[int, int], t: int, seed: int) -> bool:
    """Keep iff some entry's seeded draw for this pair succeeds (tail entries always succeed)."""
    return any(counts[qid] <= t or unit_hash(seed, uid, qid) < t / counts[qid] for qid in query_ids)


def head_only_draws_py(seed: int, uids: list[str], query_ids: list[list[int]], counts: dict[int, int],
                       t: int) -> tuple[list[bool], int]:
    """For pairs whose entries all have count > t: metaclip's decision for each, and the sum of their keep
    probabilities in millionths (each rounded, as the stage counts them). The definition `head_only_draws` is
    held to (tests/test_balance.py)."""
    keep = [metaclip_keep(uid, qids, counts, t, seed) for uid, qids in zip(uids, query_ids)]
    return keep, sum(round(pair_keep_probability(qids, counts, t) * EXPECTED_SCALE) for qids in query_ids)


def head_only_draws(seed: int, uids: list[str], lengths: np.ndarray, ids: np.ndarray, counts: np.ndarray,
                    t: int) -> tuple[np.ndarray, int]:
    """`head_only_draws_py` column-wise: pair i holds the entries ids[sum(lengths[:i]):][:lengths[i]] (each with
    its count, > t, in `counts`). One hashlib BLAKE2b per (pair, entry), the rest in numpy with the twin's float
    operations in its order: t / count and 1 - p are correctly rounded IEEE operations in both; the digest's
    64-bit value becomes a float with one rounding, as int / 2**64 does; multiply.reduceat multiplies a pair's
    misses left to right as the twin's loop does (numpy sums pairwise, but never multiplies so); rint rounds
    half to even as round() does. ~5x the twin's pairs/s (bench_native)."""
    if not len(uids):
        return np.zeros(0, bool), 0
    if len(lengths) != len(uids) or np.any(lengths < 1) or int(lengths.sum()) != len(ids) or len(counts) != len(ids):
        raise ValueError("head_only_draws: lengths, ids and counts do not describe the uids' entries")
    if np.any(counts <= t):
        raise ValueError("head_only_draws: an entry with count <= t")
    pair_uids = np.repeat(np.array(uids, object), lengths).tolist()
    blake2b = hashlib.blake2b
    digests = b"".join([blake2b(f"{seed}\x1f{uid}\x1f{qid}".encode(), digest_size=8).digest()
                        for uid, qid in zip(pair_uids, ids.tolist())])
    draws = np.frombuffer(digests, ">u8").astype(np.float64) / 2.0**64
    p = t / counts.astype(np.float64)
    starts = np.zeros(len(uids), np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    keep = np.logical_or.reduceat(draws < p, starts)
    miss = np.multiply.reduceat(1.0 - p, starts)
    return keep, int(np.rint((1.0 - miss) * EXPECTED_SCALE).astype(np.int64).sum())


def strict_key(uid: str, query_ids: Iterable[int], counts: dict[int, int], seed: int) -> tuple[int, float, str]:
    """Rank of a pair in every head entry's list: rarest entry first, then a seeded hash, then uid (unique)."""
    return min(counts[qid] for qid in query_ids), unit_hash(seed, uid), uid


def strict_keep(key: tuple, query_ids: Iterable[int], counts: dict[int, int], thresholds: dict[int, tuple],
                t: int) -> bool:
    """Keep iff the pair is within the top t of every head entry it contains."""
    return all(counts[qid] <= t or key <= thresholds[qid] for qid in query_ids)


def balance_stats(before: list[int], after: list[int], t: int) -> dict[str, Any]:
    """Head/tail statistics from per-entry match counts before and after balancing (index = query_id)."""
    head = [i for i, c in enumerate(before) if c > t]
    tail = [i for i, c in enumerate(before) if 0 < c <= t]
    total_before, total_after = sum(before), sum(after)
    tail_before, tail_after = sum(before[i] for i in tail), sum(after[i] for i in tail)

    def share(part: int, whole: int) -> float:
        return round(part / whole, 6) if whole else 0.0

    return {
        "entries": len(before),
        "zero_match_entries": sum(1 for c in before if c == 0),
        "tail_entries": len(tail),
        "head_entries": len(head),
        "matches_before": total_before,
        "matches_after": total_after,
        "head_share_of_matches_before": share(total_before - tail_before, total_before),
        "head_share_of_matches_after": share(total_after - tail_after, total_after),
        "tail_share_before": share(tail_before, total_before),
        "tail_share_after": share(tail_after, total_after),
        "tail_matches_kept_fraction": share(tail_after, tail_before) if tail_before else 1.0,
        "entries_over_t_after": sum(1 for c in after if c > t),
        "max_count_before": max(before, default=0),
        "max_count_after": max(after, default=0),
    }


def plot_entry_counts(before: list[int], after: list[int], t: int, path: str) -> None:
    """PNG of the per-entry counts sorted in decreasing order, before and after, log-log, with t marked."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for counts, label in ((before, "before balancing"), (after, "after balancing")):
        ys = sorted((c for c in counts if c > 0), reverse=True)
        if ys:
            ax.plot(range(1, len(ys) + 1), ys, label=f"{label} ({len(ys):,} entries with matches)")
    ax.axhline(t, color="grey", linestyle="--", linewidth=1, label=f"t = {t:,}")
    ax.set(xscale="log", yscale="log", xlabel="entry rank (by count)", ylabel="matched pairs per entry",
           title="Pairs per query entry")
    ax.legend()
    fig.tight_layout()
    with files.atomic_write(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)


# ---- Beam ---------------------------------------------------------------------------------------------
#
# Elements are Arrow tables of matched pairs (a parquet batch of up to BATCH_ROWS rows each), not a dict per
# pair: the first design (ReadAllFromParquet, one dict per pair through every step) ran at ~6k pairs/s per core,
# nearly all of it Beam's per-element coding. Inside a table the decisions are column-wise where the outcome is
# certain without hashing (a pair holding a tail entry is kept with probability 1 in metaclip mode; a pair
# holding no head entry passes every strict threshold), and the pure functions above decide every other pair
# (metaclip's seeded draws column-wise in `head_only_draws`, held equal to them by tests), so the kept set is the
# reference's by construction.

BATCH_ROWS = 65_536


class ReadMatchedFn(beam.DoFn):
    """A match part file -> its pairs as tables of at most `batch_rows` rows (`uid, url, caption, query_ids`)."""

    def __init__(self, batch_rows: int = BATCH_ROWS):
        self.batch_rows = batch_rows

    def process(self, path: str):
        with files.open_file(path, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=self.batch_rows, columns=list(MATCHED_COLUMNS)):
                yield pa.Table.from_batches([batch]).select(list(MATCHED_COLUMNS))


def dense_counts(counts: dict[int, int]) -> np.ndarray:
    """counts (non-negative ids) as an array indexed by query id, 0 where absent: one gather per table instead of
    a dict lookup per entry."""
    ids = np.fromiter(counts.keys(), np.int64, len(counts))
    values = np.fromiter(counts.values(), np.int64, len(counts))
    indexable = ids >= 0
    dense = np.zeros(int(ids[indexable].max()) + 1 if indexable.any() else 0, np.int64)
    dense[ids[indexable]] = values[indexable]
    return dense


class DenseCounts:
    """`dense_counts` of the last counts dict seen. Each DoFn holds its own: the side input is one object per
    bundle and the tables of the bundle share it, so it is built once per bundle, not once per table."""

    def __init__(self):
        self.source, self.dense = None, None

    def __call__(self, counts: dict[int, int]) -> np.ndarray:
        if self.source is not counts:
            self.source, self.dense = counts, dense_counts(counts)
        return self.dense


def counts_of(ids: np.ndarray, counts: dict[int, int], dense_of: DenseCounts) -> np.ndarray:
    """counts[id] for each id (0 where absent): a gather from the dense array, or dict lookups for ids an array
    cannot index (negative: a hand-made file)."""
    dense = dense_of(counts) if len(ids) and ids.min() >= 0 else None
    if dense is not None and ids.max() < len(dense):
        return dense[ids]
    return np.fromiter(map(counts.get, ids.tolist(), itertools.repeat(0)), np.int64, len(ids))


class PairColumns:
    """The columns balancing reads from a table of pairs: per pair its entries (flat ids and their pair), the
    entries' counts, and whether the pair holds a tail (count <= t) or a head (count > t) entry."""

    def __init__(self, table: pa.Table, counts: dict[int, int], t: int, dense_of: DenseCounts):
        ids = table.column("query_ids").combine_chunks() if table.num_rows else pa.array([], pa.list_(pa.int32()))
        self.n = table.num_rows
        self.lengths = pc.fill_null(pc.list_value_length(ids), 0).to_numpy(zero_copy_only=False)
        flat = pc.list_flatten(ids)  # skips the values under a null list, as `lengths` does
        self.parent = np.repeat(np.arange(self.n), self.lengths)
        self.flat = pc.fill_null(flat, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        # a null id inside a list: the pair cannot be judged (match never writes one; a damaged file might)
        self.malformed = np.bincount(self.parent[flat.is_null().to_numpy(zero_copy_only=False)], minlength=self.n) > 0
        self.has_ids = (self.lengths > 0) & ~self.malformed
        self.entry_counts = counts_of(self.flat, counts, dense_of)
        valid = self.has_ids[self.parent]
        if np.any(self.entry_counts[valid] <= 0):  # the counts come from these very tables: a bug, not bad input
            raise ValueError("balance: query ids missing from the per-entry counts")
        tail = (self.entry_counts <= t) & valid
        head = (self.entry_counts > t) & valid
        self.has_tail = np.bincount(self.parent[tail], minlength=self.n) > 0
        self.has_head = np.bincount(self.parent[head], minlength=self.n) > 0
        self.uids = table.column("uid")
        self.ids = ids

    def head_only_draws(self, mask: np.ndarray, counts: dict[int, int], t: int, seed: int) -> tuple[np.ndarray, int]:
        """`head_only_draws_py` of the rows where mask is true (pairs whose entries all have count > t): metaclip's
        decisions for them and their expected kept size in millionths (`head_only_draws`)."""
        rows = np.flatnonzero(mask)
        if not len(rows):
            return np.zeros(0, bool), 0
        entries = mask[self.parent]
        return head_only_draws(seed, self.uids.take(pa.array(rows)).to_pylist(), self.lengths[rows],
                               self.flat[entries], self.entry_counts[entries], t)

    def pairs(self, mask: np.ndarray) -> Iterable[tuple[int, str, list[int]]]:
        """(row index, uid, query ids) of the rows where mask is true: one take and one conversion per table."""
        rows = np.flatnonzero(mask)
        if not len(rows):
            return []
        index = pa.array(rows)
        return zip(rows.tolist(), self.uids.take(index).to_pylist(), self.ids.take(index).to_pylist())


class HeadEntryKeysFn(beam.DoFn):
    """Table of pairs -> (head entry id, the pair's strict key) for every head entry of every pair (strict mode)."""

    def __init__(self, t: int, seed: int):
        self.t, self.seed = t, seed
        self.dense_of = DenseCounts()

    def process(self, table: pa.Table, counts: dict[int, int]):
        cols = PairColumns(table, counts, self.t, self.dense_of)
        for _, uid, qids in cols.pairs(cols.has_head):
            key = strict_key(uid, qids, counts, self.seed)
            yield from ((qid, key) for qid in qids if counts[qid] > self.t)


class DecideKeepFn(beam.DoFn):
    """Table of pairs -> its kept rows (main, BALANCED_SCHEMA) and its dropped (uid, reason) rows ('dropped');
    counts read/kept/rejected and the expected kept size (metaclip's probabilities, in millionths)."""

    def __init__(self, mode: str, t: int, seed: int):
        self.mode, self.t, self.seed = mode, t, seed
        self.read, self.kept = counter(STAGE, "read"), counter(STAGE, "kept")
        self.rejected = {reason: counter(STAGE, f"rejected_{reason}")
                         for reason in (BALANCED_OUT, NO_QUERY_IDS, MALFORMED_QUERY_IDS)}
        self.expected = counter(STAGE, "expected_kept_millionths")
        self.dense_of = DenseCounts()

    def process(self, table: pa.Table, counts: dict[int, int], thresholds: dict[int, tuple]):
        t, seed = self.t, self.seed
        cols = PairColumns(table, counts, t, self.dense_of)
        has_ids = cols.has_ids
        # metaclip: a tail entry keeps the pair (p = 1); strict: a pair without head entries passes every threshold
        keep = cols.has_tail & has_ids if self.mode == "metaclip" else ~cols.has_head & has_ids
        # a pair with a tail entry is kept with probability exactly 1 (one factor 1 - p_e is 0); for the others the
        # seeded hashes decide
        head_only = has_ids & ~cols.has_tail
        draws, expected = cols.head_only_draws(head_only, counts, t, seed)
        expected += int(np.count_nonzero(cols.has_tail)) * EXPECTED_SCALE
        if self.mode == "metaclip":
            keep[head_only] = draws
        if self.mode == "strict":
            for i, uid, qids in cols.pairs(cols.has_head):
                keep[i] = strict_keep(strict_key(uid, qids, counts, seed), qids, counts, thresholds, t)
        reasons = np.where(cols.malformed, MALFORMED_QUERY_IDS, np.where(has_ids, BALANCED_OUT, NO_QUERY_IDS))[~keep]
        self.read.inc(cols.n)
        self.expected.inc(expected)
        n_kept = int(np.count_nonzero(keep))
        if n_kept:
            self.kept.inc(n_kept)
        for reason, n in zip(*np.unique(reasons, return_counts=True)):  # a counter is reported once touched
            self.rejected[str(reason)].inc(int(n))
        if n_kept:
            yield table.filter(pa.array(keep)).select(BALANCED_SCHEMA.names).cast(BALANCED_SCHEMA)
        if n_kept < cols.n:
            dropped = table.filter(pa.array(~keep))
            yield beam.pvalue.TaggedOutput("dropped", pa.table({"uid": dropped.column("uid"),
                                                                "reason": pa.array(reasons, pa.string())},
                                                               schema=REJECTED_SCHEMA))


class CapPairsPerQuery(beam.PTransform):
    """Tables of matched pairs -> (kept tables, dropped (uid, reason) tables, per-entry counts before, per-entry
    counts after)."""

    def __init__(self, t: int = T, seed: int = 0, mode: str = "metaclip"):
        super().__init__()
        if mode not in MODES or t < 1:
            raise ValueError(f"mode must be one of {MODES} and t >= 1 (got {mode!r}, {t})")
        self.t, self.seed, self.mode = t, seed, mode

    def expand(self, tables):
        counts = (tables
                  | "CountTable" >> beam.Map(lambda table: beamio.query_id_counts(table.column("query_ids")))
                  | "CountPerQuery" >> beam.CombineGlobally(beamio.AddCountsFn()))
        counts_side = beam.pvalue.AsSingleton(counts)
        if self.mode == "strict":
            thresholds = (tables
                          | "HeadEntryKeys" >> beam.ParDo(HeadEntryKeysFn(self.t, self.seed), counts=counts_side)
                          | "TopTPerEntry" >> beam.combiners.Top.SmallestPerKey(self.t)
                          | "Threshold" >> beam.Map(lambda kv: (kv[0], kv[1][-1]))
                          | "ToDict" >> beam.combiners.ToDict())
        else:
            thresholds = tables.pipeline | "NoThresholds" >> beam.Create([{}])
        decided = tables | "DecideKeep" >> beam.ParDo(
            DecideKeepFn(self.mode, self.t, self.seed), counts=counts_side,
            thresholds=beam.pvalue.AsSingleton(thresholds)).with_outputs("dropped", main="kept")
        counts_after = (decided.kept
                        | "CountKeptTable" >> beam.Map(lambda table: beamio.query_id_counts(table.column("query_ids")))
                        | "CountKeptPerQuery" >> beam.CombineGlobally(beamio.AddCountsFn()))
        return decided.kept, decided.dropped, counts, counts_after


# ---- entry point --------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m pipeline.balance", description=__doc__.split("\n")[0])
    p.add_argument("--matched", required=True, help="output directory of the match stage")
    p.add_argument("--out", required=True, help="output directory (local or fsspec)")
    p.add_argument("--t", type=int, default=T, help="pairs per query entry (default %(default)s, MetaCLIP 400M)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", default="metaclip", choices=MODES)
    p.add_argument("--rows-per-file", type=int, default=ROWS_PER_FILE)
    return p.parse_known_args(argv)


def matched_files(matched: str) -> tuple[list[str], str]:
    """(part files, path of query_counts.tsv) of a match output; ValueError if it is not one."""
    paths = files.find(files.join(matched, "part-*.parquet"))
    if not paths:
        raise ValueError(f"{matched}: no part-*.parquet files (run the match stage first)")
    beamio.check_parquet_columns(paths, ("url", "caption", "uid", "query_ids"))
    counts_path = f"{matched.rstrip('/')}/query_counts.tsv"
    try:
        with files.open_file(counts_path, "rt", encoding="utf-8") as f:
            header = f.readline().rstrip("\r\n")
    except FileNotFoundError:
        raise ValueError(f"{counts_path}: missing (run the match stage first)") from None
    if header != "query_id\tquery\tcount":
        raise ValueError(f"{counts_path}: not a query_counts.tsv (header 'query_id, query, count')")
    return paths, counts_path


def query_names(counts_path: str) -> list[str]:
    """The `query` column of a query_counts.tsv (read where it is needed: a list of 500k names captured in a
    transform would be pickled and compressed into the pipeline, ~2 CPU-s)."""
    with files.open_file(counts_path, "rt", encoding="utf-8", newline="") as f:
        return [line.split("\t", 2)[1] for line in text_lines(f.read())[1:]]


def read_entry_counts(path: str) -> tuple[list[int], list[int]]:
    """The `before` and `after` columns of entry_counts.tsv (one read and split: fsspec's readlines took 2 s for
    412k lines)."""
    with files.open_file(path, "rt", encoding="utf-8", newline="") as f:
        rows = [line.rsplit("\t", 2) for line in text_lines(f.read())[1:]]
    return [int(r[1]) for r in rows], [int(r[2]) for r in rows]


def run(argv: list[str] | None = None) -> dict:
    """Run the stage; returns the manifest. Bad inputs or settings exit with one error line."""
    args, beam_args = parse_args(argv)
    started = time.monotonic()
    try:
        if args.t < 1 or args.rows_per_file < 1:
            raise ValueError("--t and --rows-per-file must be >= 1")
        parts, counts_path = matched_files(args.matched)
    except ValueError as e:
        raise SystemExit(f"balance: {e}") from None
    out = args.out.rstrip("/")
    beamio.clear_previous_output(out)

    with beam.Pipeline(options=pipeline_options(beam_args)) as p:
        tables = (p
                  | "ListMatched" >> beam.Create(parts)
                  | "SpreadFiles" >> beam.Reshuffle()
                  | "ReadMatched" >> beam.ParDo(ReadMatchedFn()))
        kept, dropped, counts, counts_after = tables | "CapPairs" >> CapPairsPerQuery(args.t, args.seed, args.mode)
        _ = kept | "WriteBalanced" >> beamio.WriteParquetFiles(
            f"{out}/part", BALANCED_SCHEMA, "uid", rows_per_file=args.rows_per_file)
        _ = dropped | "WriteDropped" >> beam.io.WriteToParquetBatched(  # layout per bundle: no shuffle for these
            f"{out}/rejected/part", REJECTED_SCHEMA, codec="zstd", file_name_suffix=".parquet")
        _ = counts | "WriteEntryCounts" >> beam.Map(
            lambda before, after: beamio.write_counts_tsv(f"{out}/entry_counts.tsv", query_names(counts_path),
                                                          {"before": before, "after": after}),
            after=beam.pvalue.AsSingleton(counts_after))
    totals = read_counters(p.result, STAGE)
    counters = beamio.manifest_counters(totals)
    before, after = read_entry_counts(f"{out}/entry_counts.tsv")
    stats = {"mode": args.mode, "t": args.t, "seed": args.seed, **balance_stats(before, after, args.t),
             "pairs_before": counters["read"], "pairs_kept": counters["kept"],
             "expected_kept_metaclip": round(totals.get("expected_kept_millionths", 0) / EXPECTED_SCALE, 3)}
    write_json_atomic(f"{out}/stats.json", stats)
    plot_entry_counts(before, after, args.t, f"{out}/entry_counts.png")
    settings = dict(vars(args), beam_args=beam_args)
    inputs = [beamio.input_info(path) for path in (*parts, counts_path)]
    manifest = write_manifest(out, stage=STAGE, settings=settings, inputs=inputs, counters=counters,
                              wall_time_s=time.monotonic() - started, extra={"stats": stats})
    log.info("balance (%s, t=%d): %d -> %d pairs; tail share %.3f -> %.3f", args.mode, args.t, counters["read"],
             counters["kept"], stats["tail_share_before"], stats["tail_share_after"])
    return manifest


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    run(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
