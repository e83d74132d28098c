"""Tests of the `balance` stage: MetaCLIP and strict balancing, the transform, run() end to end."""

from __future__ import annotations

import hashlib
import json
import random

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import balance
from tests import balance_reference as reference
from pipeline.common.records import matched_schema, uid_of

FAST = ["--runner=FnApiRunner"]

# Pairs as (uid, sorted distinct query ids); a few ids so that heads (count > t) occur.
pairs_strategy = st.lists(st.lists(st.integers(0, 6), min_size=1, max_size=3, unique=True).map(sorted),
                          min_size=1, max_size=60).map(
    lambda qids: [(uid_of(f"http://x/{i}", "c"), q) for i, q in enumerate(qids)])


# ---- pure core -------------------------------------------------------------------------------------------

def test_keep_probability():
    assert balance.keep_probability(10, 20_000) == 1.0
    assert balance.keep_probability(20_000, 20_000) == 1.0
    assert balance.keep_probability(80_000, 20_000) == 0.25
    assert balance.pair_keep_probability([0, 1], {0: 40, 1: 40}, 20) == pytest.approx(0.75)


def test_unit_hash_is_uniform_enough_and_stable():
    values = [balance.unit_hash(0, f"u{i}", 3) for i in range(20_000)]
    assert all(0 <= v < 1 for v in values)
    assert abs(sum(v < 0.25 for v in values) / len(values) - 0.25) < 0.02
    assert balance.unit_hash(0, "u1", 3) == values[1] != balance.unit_hash(1, "u1", 3)


def test_metaclip_keeps_about_t_per_single_entry_head():
    pairs = [(f"u{i}", [0]) for i in range(10_000)] + [(f"v{i}", [1]) for i in range(50)]
    kept = reference.select_pairs(pairs, t=1000, seed=0)
    assert 900 <= sum(u.startswith("u") for u in kept) <= 1100  # Binomial(10000, 0.1): sd 30
    assert sum(u.startswith("v") for u in kept) == 50


@settings(max_examples=150, deadline=None)
@given(pairs=pairs_strategy, t=st.integers(1, 12), seed=st.integers(0, 3))
def test_metaclip_tail_entry_keeps_all_its_pairs(pairs, t, seed):
    counts = reference.count_entries(pairs)
    kept = reference.select_pairs(pairs, t, seed)
    for uid, qids in pairs:
        if any(counts[q] <= t for q in qids):
            assert uid in kept


@settings(max_examples=150, deadline=None)
@given(pairs=pairs_strategy, t=st.integers(1, 12))
def test_expected_kept_per_entry_at_most_t(pairs, t):
    counts = reference.count_entries(pairs)
    for qid, count in counts.items():  # each entry's own draws keep count * p_e = min(count, t) pairs
        assert count * balance.keep_probability(count, t) <= t + 1e-9
    single = [(uid, qids[:1]) for uid, qids in pairs]  # one entry per pair: the pair's expectation is the entry's
    single_counts = reference.count_entries(single)
    for qid in single_counts:
        expected = sum(balance.pair_keep_probability(q, single_counts, t) for _, q in single if q == [qid])
        assert expected <= t + 1e-9


@settings(max_examples=150, deadline=None)
@given(pairs=pairs_strategy, t=st.integers(1, 12), seed=st.integers(0, 3))
def test_strict_never_exceeds_t_and_keeps_pure_tail_pairs(pairs, t, seed):
    counts = reference.count_entries(pairs)
    kept = reference.select_pairs(pairs, t, seed, mode="strict")
    kept_counts = reference.count_entries([p for p in pairs if p[0] in kept])
    assert all(n <= t for n in kept_counts.values())
    for uid, qids in pairs:
        if all(counts[q] <= t for q in qids):
            assert uid in kept


@settings(max_examples=100, deadline=None)
@given(pairs=pairs_strategy, t=st.integers(1, 12), seed=st.integers(0, 3), mode=st.sampled_from(balance.MODES),
       shuffle_seed=st.integers(0, 1000), n_parts=st.integers(1, 4))
def test_selection_is_deterministic_and_independent_of_order_and_partitioning(pairs, t, seed, mode, shuffle_seed,
                                                                              n_parts):
    kept = reference.select_pairs(pairs, t, seed, mode)
    assert reference.select_pairs(pairs, t, seed, mode) == kept
    shuffled = pairs[:]
    random.Random(shuffle_seed).shuffle(shuffled)
    assert reference.select_pairs(shuffled, t, seed, mode) == kept
    # Each worker decides its partition with the global counts (and thresholds): the union is the same.
    counts = reference.count_entries(pairs)
    thresholds = reference.strict_thresholds(pairs, counts, t, seed)
    parts = [shuffled[i::n_parts] for i in range(n_parts)]
    union = set()
    for part in parts:
        for uid, qids in part:
            keep = (balance.metaclip_keep(uid, qids, counts, t, seed) if mode == "metaclip" else
                    balance.strict_keep(balance.strict_key(uid, qids, counts, seed), qids, counts, thresholds, t))
            if keep:
                union.add(uid)
    assert union == kept


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 40), min_size=1, max_size=6, unique=True), min_size=0, max_size=30),
       st.integers(1, 6), st.integers(-3, 2**40))
def test_head_only_draws_equal_the_pure_functions(id_lists, t, seed):
    # Pairs whose entries all have count > t: the column-wise draws and expected size equal metaclip_keep and
    # pair_keep_probability (same hashes, same double operations in the same order, round half to even).
    counts = {qid: t + 1 + (qid * 7919) % 50 for qid in range(41)}
    uids = [uid_of(f"http://x/{i}", "c") for i in range(len(id_lists))]
    flat = np.array([q for ids in id_lists for q in ids], np.int64)
    keep, expected = balance.head_only_draws(seed, uids, np.array([len(ids) for ids in id_lists], np.int32), flat,
                                             np.array([counts[q] for q in flat.tolist()], np.int64), t)
    want_keep, want_expected = balance.head_only_draws_py(seed, uids, id_lists, counts, t)
    assert keep.tolist() == want_keep and expected == want_expected


def test_head_only_draws_by_hand():
    def draw(text: bytes) -> float:  # blake2b(seed \x1f uid \x1f entry, 8 bytes) as a big-endian fraction of 2**64
        return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") / 2**64

    # t = 1: entry 3 (count 4) has p = 0.25, entry 5 (count 2) p = 0.5
    keep, expected = balance.head_only_draws(0, ["u", "v"], np.array([2, 1]), np.array([3, 5, 3]),
                                             np.array([4, 2, 4]), 1)
    assert keep.tolist() == [draw(b"0\x1fu\x1f3") < 0.25 or draw(b"0\x1fu\x1f5") < 0.5, draw(b"0\x1fv\x1f3") < 0.25]
    assert expected == 625_000 + 250_000  # 1 - 0.75 * 0.5, and 0.25, in millionths


def test_head_only_draws_refuse_inconsistent_input():
    with pytest.raises(ValueError, match="count <= t"):
        balance.head_only_draws(0, ["ab"], np.array([2]), np.array([1, 2]), np.array([5, 1]), 3)
    with pytest.raises(ValueError, match="do not describe"):
        balance.head_only_draws(0, ["ab", "cd"], np.array([2, 0]), np.array([1, 2]), np.array([5, 5]), 3)


def test_strict_prefers_pairs_with_rare_entries():
    # Entry 0 is in 4 pairs, cap 2; the two pairs that also hold a tail entry (1, 2) win its budget.
    pairs = [("a", [0]), ("b", [0, 1]), ("c", [0]), ("d", [0, 2])]
    assert reference.select_pairs(pairs, t=2, seed=0, mode="strict") == {"b", "d"}


def test_balance_stats():
    stats = balance.balance_stats(before=[0, 5, 100, 1], after=[0, 5, 10, 1], t=10)
    assert stats["zero_match_entries"] == 1 and stats["head_entries"] == 1 and stats["tail_entries"] == 2
    assert stats["head_share_of_matches_before"] == pytest.approx(100 / 106, abs=1e-6)
    assert stats["tail_share_after"] == pytest.approx(6 / 16, abs=1e-6)
    assert stats["tail_matches_kept_fraction"] == 1.0 and stats["entries_over_t_after"] == 0


# ---- the transform on beam.Create ------------------------------------------------------------------------

def random_pairs(n: int, n_entries: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        url, caption = f"http://img/{i}.jpg", f"caption {i}"
        qids = sorted(set(rng.sample(range(n_entries), rng.randint(1, 3)))
                      if rng.random() < 0.5 else {0, rng.randrange(n_entries)})
        rows.append({"uid": uid_of(url, caption), "url": url, "caption": caption, "query_ids": qids})
    return rows


@pytest.mark.parametrize("mode", balance.MODES)
def test_cap_pairs_transform_agrees_with_reference(mode):
    rows = random_pairs(150, 12)
    expected = reference.select_pairs([(r["uid"], r["query_ids"]) for r in rows], t=12, seed=7, mode=mode)
    tables = [pa.Table.from_pylist(rows[k::3], schema=matched_schema()) for k in range(3)]
    with TestPipeline(argv=FAST) as p:
        kept, dropped, counts, _ = p | beam.Create(tables) | balance.CapPairsPerQuery(t=12, seed=7, mode=mode)
        assert_that(kept | "KeptUids" >> beam.FlatMap(lambda t: t.column("uid").to_pylist()),
                    equal_to(sorted(expected)), label="Kept")
        assert_that(dropped | "DroppedUids" >> beam.FlatMap(lambda t: t.column("uid").to_pylist()),
                    equal_to(sorted({r["uid"] for r in rows} - expected)), label="Dropped")
        assert_that(counts, equal_to([reference.count_entries([(r["uid"], r["query_ids"]) for r in rows])]),
                    label="Counts")


@pytest.mark.parametrize("layout", ["one chunk", "chunks", "slice", "parquet"])
@pytest.mark.parametrize("mode", balance.MODES)
def test_decide_keep_on_a_table_matches_the_pure_functions(tmp_path, mode, layout):
    # Column-wise shortcuts (tail entry -> kept in metaclip mode; no head entry -> kept in strict mode) plus the
    # pure functions for the rest must give the reference's decisions, whatever the table's layout; empty and null
    # id lists are no_query_ids, a null id inside a list is malformed_query_ids.
    rows = random_pairs(300, 8, seed=5)
    rows[3]["query_ids"], rows[7]["query_ids"], rows[11]["query_ids"] = [], None, [1, None]
    good = [(r["uid"], r["query_ids"]) for r in rows if r["query_ids"] and None not in r["query_ids"]]
    counts = reference.count_entries(good)
    thresholds = reference.strict_thresholds(good, counts, 20, 4)
    table = pa.Table.from_pylist(rows, schema=matched_schema())
    if layout == "chunks":
        table = pa.concat_tables([table.slice(0, 100), table.slice(100)])
    elif layout == "slice":  # offsets into a larger table's buffers
        table = pa.concat_tables([pa.Table.from_pylist(random_pairs(7, 8, seed=9), schema=matched_schema()),
                                  table]).combine_chunks().slice(7)
    elif layout == "parquet":
        pq.write_table(table, tmp_path / "t.parquet")
        table = pq.read_table(tmp_path / "t.parquet")
    out = list(balance.DecideKeepFn(mode, 20, 4).process(table, counts, thresholds))
    kept = next(o for o in out if isinstance(o, pa.Table))
    dropped = next(o.value for o in out if not isinstance(o, pa.Table))
    assert set(kept.column("uid").to_pylist()) == reference.select_pairs(good, 20, 4, mode)
    assert kept.schema == balance.BALANCED_SCHEMA and dropped.schema == balance.REJECTED_SCHEMA
    reasons = dict(zip(dropped.column("uid").to_pylist(), dropped.column("reason").to_pylist()))
    assert reasons[rows[3]["uid"]] == reasons[rows[7]["uid"]] == balance.NO_QUERY_IDS
    assert reasons[rows[11]["uid"]] == balance.MALFORMED_QUERY_IDS
    assert kept.num_rows + dropped.num_rows == 300
    assert set(reasons.values()) == {balance.NO_QUERY_IDS, balance.MALFORMED_QUERY_IDS, balance.BALANCED_OUT}


def test_decide_keep_refuses_counts_that_miss_an_id():
    table = pa.Table.from_pylist(random_pairs(5, 3), schema=matched_schema())
    with pytest.raises(ValueError, match="missing from the per-entry counts"):
        list(balance.DecideKeepFn("metaclip", 2, 0).process(table, {0: 3}, {}))


# ---- run() end to end ------------------------------------------------------------------------------------

def write_matched(folder, rows: list[dict], n_entries: int, n_files: int = 2) -> str:
    folder.mkdir(parents=True)
    for k in range(n_files):
        pq.write_table(pa.Table.from_pylist(rows[k::n_files], schema=matched_schema()),
                       folder / f"part-{k:05d}-of-{n_files:05d}.parquet")
    counts = reference.count_entries([(r["uid"], r["query_ids"]) for r in rows])
    lines = ["query_id\tquery\tcount"] + [f"{q}\tword{q}\t{counts.get(q, 0)}" for q in range(n_entries)]
    (folder / "query_counts.tsv").write_text("\n".join(lines) + "\n")
    return str(folder)


def read_rows(folder) -> list[dict]:
    return [row for f in sorted(folder.glob("part-*.parquet")) for row in pq.read_table(f).to_pylist()]


@pytest.mark.parametrize("mode", balance.MODES)
def test_run_end_to_end(tmp_path, mode):
    rows = random_pairs(400, 15)
    matched = write_matched(tmp_path / "matched", rows, n_entries=16)  # entry 15 has no match
    out = tmp_path / "balanced"
    manifest = balance.run(["--matched", matched, "--out", str(out), "--t", "30", "--seed", "3", "--mode", mode,
                            "--rows-per-file", "50", *FAST])
    expected = reference.select_pairs([(r["uid"], r["query_ids"]) for r in rows], t=30, seed=3, mode=mode)
    kept = read_rows(out)
    assert [r["uid"] for r in kept] != [] and {r["uid"] for r in kept} == expected
    assert pq.read_schema(next(out.glob("part-*.parquet"))).names == ["url", "caption", "uid", "query_ids"]
    assert len(list(out.glob("part-*.parquet"))) == -(-len(expected) // 50)
    for f in out.glob("part-*.parquet"):
        uids = pq.read_table(f).column("uid").to_pylist()
        assert uids == sorted(uids)
    counters = manifest["counters"]
    assert counters == {"read": 400, "kept": len(expected), "rejected": {"balanced_out": 400 - len(expected)}}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["zero_match_entries"] == 1 and stats["entries"] == 16 and stats["pairs_kept"] == len(expected)
    assert stats["head_entries"] >= 1 and 0 < stats["expected_kept_metaclip"] <= 400
    if mode == "strict":
        assert stats["max_count_after"] <= 30
    else:
        assert stats["tail_matches_kept_fraction"] == 1.0
    assert (out / "entry_counts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "entry_counts.tsv").read_text().splitlines()[0] == "query_id\tquery\tbefore\tafter"
    assert len(pq.read_table(out / "rejected").to_pylist()) == 400 - len(expected)


@pytest.mark.parametrize("argv, message", [
    (["--matched", "{tmp}/nothing"], "no part-*.parquet"),
    (["--matched", "{tmp}/matched", "--t", "0"], "--t"),
    (["--matched", "{tmp}/no-counts"], "query_counts.tsv: missing"),
    (["--matched", "{tmp}/corrupt"], "not a readable parquet file"),
    (["--matched", "{tmp}/no-ids"], "no column 'query_ids'"),
])
def test_run_bad_input_is_one_clear_error(tmp_path, argv, message):
    write_matched(tmp_path / "matched", random_pairs(5, 3), n_entries=3)
    write_matched(tmp_path / "no-counts", random_pairs(5, 3), n_entries=3)
    (tmp_path / "no-counts" / "query_counts.tsv").unlink()
    write_matched(tmp_path / "corrupt", random_pairs(5, 3), n_entries=3)
    next((tmp_path / "corrupt").glob("part-*.parquet")).write_bytes(b"not a parquet file")
    write_matched(tmp_path / "no-ids", random_pairs(5, 3), n_entries=3)
    part = next((tmp_path / "no-ids").glob("part-*.parquet"))
    pq.write_table(pq.read_table(part).drop_columns(["query_ids"]), part)
    with pytest.raises(SystemExit) as exc:
        balance.run([a.format(tmp=tmp_path) for a in argv] + ["--out", str(tmp_path / "out"), *FAST])
    assert str(exc.value).startswith("balance: ") and message in str(exc.value)


@pytest.mark.slow
def test_run_same_output_on_one_and_two_workers(tmp_path):
    matched = write_matched(tmp_path / "matched", random_pairs(300, 10), n_entries=10, n_files=3)
    common = ["--matched", matched, "--t", "25", "--mode", "strict", "--rows-per-file", "40"]
    balance.run(common + ["--out", str(tmp_path / "one"), *FAST])
    balance.run(common + ["--out", str(tmp_path / "two"), "--direct_running_mode=multi_processing",
                          "--direct_num_workers=2"])
    assert_same_files(tmp_path / "one", tmp_path / "two", expect_parts=len(list((tmp_path / "one").glob("part-*"))),
                      skip="rejected")
    dropped = [sorted(map(str, pq.read_table(tmp_path / d / "rejected").to_pylist())) for d in ("one", "two")]
    assert dropped[0] == dropped[1] and dropped[0]


def assert_same_files(one, two, expect_parts: int, skip: str = "-") -> None:
    """Every output file but the manifest (times, options) and those under `skip` is byte-identical."""
    def names(folder):
        return sorted(str(f.relative_to(folder)) for f in folder.rglob("*")
                      if f.is_file() and f.name != "manifest.json" and not str(f.relative_to(folder)).startswith(skip))

    assert names(one) == names(two)
    assert len([n for n in names(one) if n.startswith("part-")]) == expect_parts
    for name in names(one):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
