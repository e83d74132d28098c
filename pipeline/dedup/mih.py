"""Exact Hamming range search of 64-bit hashes by multi-index hashing in numpy (`dedup`, stage 5).

Multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012) with the general pigeonhole principle (Qin et al., ICDE
2018): cut every 64-bit hash into m pieces and give piece i a flip budget t_i (-1: not probed). If two hashes are
within r bits and sum(t_i) >= r - m + 1, some piece i differs in at most t_i bits (else every piece differs in at
least t_i + 1, in all more than r). So probing each piece's table at the query's piece with every flip of up to t_i
bits finds every match (exact recall); the candidates are then checked on all 64 bits. The budgets need not be
equal: at r = 6 with 3 pieces, (2, 1, 1) probes 254 + 22 + 23 buckets where the plain pigeonhole's (2, 2, 2) probes
~740. `plan` picks the piece widths and budgets for the number of rows and the radius from a cost model (probes
plus expected candidates), so a small index gets narrow pieces (small tables, few probes) and a large one wide
pieces (few candidates per probe).

Each table is a sorted array of database row ids with an offsets array indexed by the piece value (CSR, direct
addressing: 2^22 + 1 int32 offsets = 16 MB for the widest piece), plus the hashes in the same order, so that a
candidate is checked where its bucket lies (one gather instead of two); a batch of queries is probed at once with
array operations, in chunks that keep the intermediate arrays in cache.

Why not faiss' own `IndexBinaryMultiHash` (3 x 21 bits, nflip 2: the plain scheme, exact too): on 1M hashes at
r <= 8, one thread, faiss answered 4,597 queries/s and this 49,653 (10.8x), both exact against brute force
(bench/bench_dedup.py, same run; BENCHMARKS.md, section dedup). faiss probes and verifies query by query through
a hash map; here the probes of a chunk of queries are one gather.

In: uint64 hashes (the database) and a radius. Out: `range_search(queries[, radius])` -> (query row, database row,
distance) of every pair within the radius, sorted by query row then database row.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np

MAX_RADIUS = 8              # above, the probes of a 64-bit hash outgrow a scan of a dedup-sized eval side
MAX_WIDTH = 22              # widest piece: 2^22 + 1 int32 offsets (16 MB)
MIN_PIECES, MAX_PIECES = math.ceil(64 / MAX_WIDTH), 8
CHUNK = 1024                # queries probed together: their probes and candidates stay in cache
CANDIDATE_COST = 1.5        # a candidate (gather + check) costs ~1.5 probes (measured in bench_dedup_scale)


def widths_of(pieces: int) -> tuple[int, ...]:
    """64 bits cut into `pieces` contiguous pieces of (nearly) equal width, the wider ones first."""
    base, wide = divmod(64, pieces)
    return tuple(base + 1 if i < wide else base for i in range(pieces))


def probes_of(width: int, flips: int) -> int:
    """Buckets probed in a table of `width` bits with up to `flips` bits flipped (0 if the piece is skipped)."""
    return sum(math.comb(width, k) for k in range(flips + 1))


def piece_cost(width: int, flips: int, rows: int) -> float:
    """Expected work of probing one piece: probes plus the candidates they bring (uniform hashes)."""
    return probes_of(width, flips) * (1 + CANDIDATE_COST * rows / 2 ** width)


def flip_budgets(widths: tuple[int, ...], rows: int, radius: int,
                 probed: tuple[bool, ...] | None = None) -> tuple[int, ...]:
    """The cheapest per-piece flip budgets t (-1: skip) with sum(t) >= radius - len(widths) + 1 (exact recall), using
    only the `probed` pieces (default: all). Greedy from every piece skipped, one flip at a time where it costs
    least: optimal, as each piece's cost grows with every added flip by more than the last (C(w, k) grows for k < w/2)."""
    usable = [i for i in range(len(widths)) if probed is None or probed[i]]
    budgets = [-1] * len(widths)
    while sum(budgets) < radius - len(widths) + 1:
        i = min(usable, key=lambda i: (piece_cost(widths[i], budgets[i] + 1, rows) -
                                       piece_cost(widths[i], budgets[i], rows), i))
        budgets[i] += 1
    return tuple(budgets)


def plan(rows: int, radius: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(piece widths, flip budgets) of the cheapest layout for `rows` hashes searched at `radius`."""
    def cost(pieces: int) -> float:
        widths = widths_of(pieces)
        # + building each probed table (2^w offsets), as if spread over a million queries: breaks ties for few rows
        return sum(piece_cost(w, t, rows) + 2 ** w / 2 ** 20 for w, t in zip(widths, flip_budgets(widths, rows, radius))
                   if t >= 0)
    pieces = min(range(MIN_PIECES, MAX_PIECES + 1), key=cost)
    return widths_of(pieces), flip_budgets(widths_of(pieces), rows, radius)


@functools.lru_cache(maxsize=None)
def flip_masks(bits: int, flips: int) -> np.ndarray:
    """Every mask of `bits` bits with at most `flips` bits set, by number of bits set (0 first)."""
    masks = [0]
    for k in range(1, flips + 1):
        masks += [sum(1 << i for i in combo) for combo in itertools.combinations(range(bits), k)]
    return np.array(masks, dtype=np.int64)


class MultiIndexHash:
    """An exact Hamming index over uint64 hashes, for range searches of radius <= `radius` (<= MAX_RADIUS)."""

    def __init__(self, hashes: np.ndarray, radius: int):
        if not 0 <= radius <= MAX_RADIUS:
            raise ValueError(f"radius {radius} is outside 0..{MAX_RADIUS}")
        self.hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
        self.radius = radius
        self.ntotal = len(self.hashes)
        self.widths, budgets = plan(self.ntotal, radius)
        self.shifts = tuple(itertools.accumulate((0,) + self.widths[:-1]))
        self.pieces = []    # per piece: (row ids by piece value, offsets, hashes in that order); None if never probed
        for shift, width, flips in zip(self.shifts, self.widths, budgets):
            if flips < 0:
                self.pieces.append(None)
                continue
            keys = self._piece(self.hashes, shift, width)
            offsets = np.zeros((1 << width) + 1, dtype=np.int32)
            np.cumsum(np.bincount(keys, minlength=1 << width), out=offsets[1:])
            order = np.argsort(keys, kind="stable")
            self.pieces.append((order.astype(np.int32), offsets, self.hashes[order]))

    @staticmethod
    def _piece(hashes: np.ndarray, shift: int, width: int) -> np.ndarray:
        return ((hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)

    def range_search(self, queries: np.ndarray, radius: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query row, database row, distance) of every pair with Hamming distance <= radius (default: the index's)."""
        radius = self.radius if radius is None else radius
        if not 0 <= radius <= self.radius:
            raise ValueError(f"radius {radius} is outside 0..{self.radius} (the radius this index was built for)")
        queries = np.ascontiguousarray(queries, dtype=np.uint64)
        # the index's pieces, with the cheapest budgets for this radius among those it built tables for
        budgets = flip_budgets(self.widths, self.ntotal, radius, tuple(p is not None for p in self.pieces))
        found_q, found_id = [], []
        for start in range(0, len(queries), CHUNK):
            chunk = queries[start:start + CHUNK]
            for piece, shift, width, flips in zip(self.pieces, self.shifts, self.widths, budgets):
                if flips < 0:
                    continue
                q, ids = self._probe(piece, chunk, shift, width, flips, radius)
                found_q.append(q + start)
                found_id.append(ids)
        if not found_q:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        # a pair close in several pieces was found once per piece: keep one
        n = max(1, self.ntotal)
        pairs = np.unique(np.concatenate(found_q) * n + np.concatenate(found_id))
        q, ids = pairs // n, pairs % n
        return q, ids, np.bitwise_count(self.hashes[ids] ^ queries[q]).astype(np.int64)

    @staticmethod
    def _probe(piece: tuple, queries: np.ndarray, shift: int, width: int, flips: int,
               radius: int) -> tuple[np.ndarray, np.ndarray]:
        """(query row, database row) of the pairs within `radius` found by probing one piece with <= `flips` flips."""
        order, offsets, sorted_hashes = piece
        probes = MultiIndexHash._piece(queries, shift, width)[:, None] ^ flip_masks(width, flips)[None, :]
        first = offsets[probes]
        count = offsets[probes + 1] - first
        per_query = count.sum(axis=1)
        count = count.ravel()
        # each probed bucket [first, first + count) expanded into positions of the piece's sorted arrays
        before = np.cumsum(count) - count
        pos = np.repeat(first.ravel() - before, count) + np.arange(int(per_query.sum()))
        close = np.flatnonzero(np.bitwise_count(sorted_hashes[pos] ^ np.repeat(queries, per_query)) <= radius)
        return np.searchsorted(np.cumsum(per_query), close, side="right"), order[pos[close]].astype(np.int64)
