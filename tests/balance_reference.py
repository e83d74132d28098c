"""MetaCLIP's balancing written out in memory, independently of pipeline/balance.py: the reference that its Beam
transform (and the C draws) must agree with. Only the seeded hash `balance.unit_hash` is shared: it defines the
draws, so a reference with another hash would decide other pairs."""

from __future__ import annotations

from collections import Counter

from pipeline.balance import unit_hash


def count_entries(pairs: list[tuple[str, list[int]]]) -> dict[int, int]:
    """Matches per entry (query id) over all pairs."""
    return dict(Counter(qid for _, qids in pairs for qid in qids))


def strict_rank(uid: str, qids: list[int], counts: dict[int, int], seed: int) -> tuple:
    """Strict mode's order inside a head entry: rarest entry of the pair first, then a seeded hash, then uid."""
    return min(counts[q] for q in qids), unit_hash(seed, uid), uid


def strict_thresholds(pairs, counts: dict[int, int], t: int, seed: int) -> dict[int, tuple]:
    """Per head entry (count > t): the rank of its t-th pair."""
    ranks: dict[int, list[tuple]] = {}
    for uid, qids in pairs:
        for q in qids:
            if counts[q] > t:
                ranks.setdefault(q, []).append(strict_rank(uid, qids, counts, seed))
    return {q: sorted(r)[t - 1] for q, r in ranks.items()}


def select_pairs(pairs: list[tuple[str, list[int]]], t: int, seed: int, mode: str = "metaclip") -> set[str]:
    """Kept uids. metaclip (Xu et al. 2023, `balance_sampling`): a pair with an entry matched <= t times is kept;
    otherwise each of its entries picks it with probability t / count (draw: unit_hash(seed, uid, entry)) and it
    is kept if any does. strict: kept iff within the first t pairs (strict_rank) of every head entry it holds.
    Pairs without entries are never kept."""
    counts = count_entries(pairs)
    if mode == "metaclip":
        return {uid for uid, qids in pairs
                if qids and any(counts[q] <= t or unit_hash(seed, uid, q) < t / counts[q] for q in qids)}
    cutoff = strict_thresholds(pairs, counts, t, seed)
    return {uid for uid, qids in pairs
            if qids and all(counts[q] <= t or strict_rank(uid, qids, counts, seed) <= cutoff[q] for q in qids)}
