"""Exact Hamming range search of 64-bit hashes by multi-index hashing in numpy (`dedup`, stage 5).

Multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012): cut every 64-bit hash into 3 pieces of 21, 21 and 22
bits. Two hashes within r bits differ, by pigeonhole, in at most r // 3 bits of some piece, so probing each
piece's table at the query's piece with every flip of up to r // 3 bits finds every match (exact recall); the
candidates are then checked on all 64 bits. Each table is a sorted array of database row ids with an offsets
array indexed by the piece value (CSR, direct addressing: 2^22 + 1 int32 offsets = 16 MB for the widest piece),
and a whole batch of queries is probed at once with array operations.

Why not faiss' own `IndexBinaryMultiHash` (3 x 21 bits, nflip 2: the same scheme, exact too): on 1M hashes at
r <= 8, one thread, it answered 3,802 queries/s and this 16,714 (4.4x; 100k hashes: 12,469 vs 31,297), both
exact against brute force (bench/bench_dedup.py, same run; BENCHMARKS.md, section dedup). faiss probes and
verifies query by query through a hash map; here the probes of all queries are one gather.

In: uint64 hashes (the database) and a radius. Out: `range_search(queries)` -> (query row, database row,
distance) of every pair within the radius, sorted by query row then database row.
"""

from __future__ import annotations

import itertools

import numpy as np

WIDTHS = (21, 21, 22)       # bits per piece: 3 pieces cover all 64 bits
MAX_RADIUS = 8              # r // 3 <= 2 flips: 1 + 22 + 231 probes per piece; beyond, probes outgrow a scan


def flip_masks(bits: int, flips: int) -> np.ndarray:
    """Every mask of `bits` bits with at most `flips` bits set, 0 first."""
    masks = [0]
    for k in range(1, flips + 1):
        masks += [sum(1 << i for i in combo) for combo in itertools.combinations(range(bits), k)]
    return np.array(masks, dtype=np.int64)


class MultiIndexHash:
    """An exact radius-`radius` Hamming index over uint64 hashes (radius <= MAX_RADIUS)."""

    def __init__(self, hashes: np.ndarray, radius: int):
        if not 0 <= radius <= MAX_RADIUS:
            raise ValueError(f"radius {radius} is outside 0..{MAX_RADIUS}")
        self.hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
        self.radius = radius
        self.ntotal = len(self.hashes)
        self.pieces = []
        shift = 0
        for width in WIDTHS:
            keys = self._piece(self.hashes, shift, width)
            offsets = np.zeros((1 << width) + 1, dtype=np.int32)
            np.cumsum(np.bincount(keys, minlength=1 << width), out=offsets[1:])
            self.pieces.append((shift, width, np.argsort(keys, kind="stable").astype(np.int32), offsets,
                                flip_masks(width, radius // len(WIDTHS))))
            shift += width

    @staticmethod
    def _piece(hashes: np.ndarray, shift: int, width: int) -> np.ndarray:
        return ((hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)

    def range_search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query row, database row, distance) of every pair with Hamming distance <= radius."""
        queries = np.ascontiguousarray(queries, dtype=np.uint64)
        found_q, found_id = [], []
        for shift, width, order, offsets, masks in self.pieces:
            probes = (self._piece(queries, shift, width)[:, None] ^ masks[None, :]).ravel()
            start, count = offsets[probes], offsets[probes + 1] - offsets[probes]
            hit = count > 0
            start, count = start[hit].astype(np.int64), count[hit].astype(np.int64)
            probe_query = np.repeat(np.arange(len(queries)), len(masks))[hit]
            # expand each probed bucket [start, start + count) into its rows of `order`
            first = np.cumsum(count) - count
            rows = order[np.repeat(start - first, count) + np.arange(int(count.sum()))]
            query = np.repeat(probe_query, count)
            close = np.bitwise_count(self.hashes[rows] ^ queries[query]) <= self.radius
            found_q.append(query[close])
            found_id.append(rows[close].astype(np.int64))
        # a pair close in several pieces was found once per piece: keep one
        pairs = np.unique(np.concatenate(found_q) * max(1, self.ntotal) + np.concatenate(found_id))
        q, ids = pairs // max(1, self.ntotal), pairs % max(1, self.ntotal)
        return q, ids, np.bitwise_count(self.hashes[ids] ^ queries[q]).astype(np.int64)
