"""The dedup eval index at ImageNet size: ImageNet val (50,000 images) x 44 variants = 2.2M uint64 rows.

Synthetic: 2.2M uniform random 64-bit hashes; 100,000 queries of which 10,000 are planted neighbours (a
database row with 1..8 random bits flipped). Measures `mih.MultiIndexHash` build time and RSS growth, the
exact range-search rate at radius 8 (the largest default threshold, the radius `hash_pairs` searches), that
every planted pair is found, and brute force (numpy popcount over all rows) on 2,000 of the queries as the
reference in the same run, whose pair count must equal the index's. Real pHashes are not uniform (buckets
are fuller), so the rate here is an upper bound.

Run: python -m bench.bench_dedup_scale [--rows 2200000] [--queries 100000]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from pipeline.dedup.mih import MultiIndexHash

RADIUS = 8


def random_hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 1 << 64, n, dtype=np.uint64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_200_000)
    parser.add_argument("--queries", type=int, default=100_000)
    args = parser.parse_args()
    rng = np.random.default_rng(17)
    db, queries = random_hashes(rng, args.rows), random_hashes(rng, args.queries)
    nplant = args.queries // 10
    src = rng.choice(args.rows, nplant, replace=False)
    for i, s in enumerate(src):
        bits = rng.choice(64, int(rng.integers(1, RADIUS + 1)), replace=False)
        queries[i] = db[s] ^ np.uint64(sum(1 << int(b) for b in bits))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    index = MultiIndexHash(db, RADIUS)
    build_s = time.perf_counter() - t
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    q, ids, _ = index.range_search(queries)
    search_s = time.perf_counter() - t
    found = set(zip(q.tolist(), ids.tolist()))
    missed = sum((i, int(s)) not in found for i, s in enumerate(src))
    nref = min(2000, args.queries)
    t = time.perf_counter()
    ref_pairs = sum(int((np.bitwise_count(db ^ x) <= RADIUS).sum()) for x in queries[:nref])
    ref_s = time.perf_counter() - t
    mih_rate, ref_rate = args.queries / search_s, nref / ref_s
    print(f"rows {args.rows:,}: build {build_s:.2f} s, RSS +{(rss1 - rss0) / 1024:.0f} MB "
          f"(peak {rss1 / 1024:.0f} MB)")
    print(f"exact search r={RADIUS}: {mih_rate:,.0f} queries/s; brute force {ref_rate:,.0f} queries/s "
          f"(x{mih_rate / ref_rate:.1f}); planted missed {missed}/{nplant}; pairs on first {nref}: "
          f"index {int((q < nref).sum())}, brute force {ref_pairs}")
    # hash_pairs searches 3 hashes per shard image (phash, phash_trimmed, phash_centre)
    print(f"search cost per shard image: {3e3 / mih_rate:.3f} ms (3 queries) = "
          f"{mih_rate / 3:,.0f} samples/s/core from the search alone")


if __name__ == "__main__":
    main()
