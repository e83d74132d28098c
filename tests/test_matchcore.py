"""The match stage's C core (pipeline/common/_matchcore.c) equals its Python twins (level 1: pure functions).

`check_rows` is held to `match.check_rows_py` (steps 1-3 of the recipe: raw checks, normalisation, URL and length
filters, MetaCLIP spacing) on rows built from the characters where the two could disagree: every ASCII
whitespace character Python's str.split()/strip() and the regex class \\s know (\\x1c-\\x1f included), the
punctuation marks of text.PUNCT_TO_WRAP, URL delimiters, scheme spellings, '&' references, non-ASCII letters
and spaces, non-string values and readers' reasons. `hit_columns` and `uids` are held to theirs on generated
input (BLAKE2b across its 128-byte block boundaries, surrogates passed through as records.uid_of encodes them),
and balance's `metaclip_draws` to `balance.head_only_draws_py` (metaclip_keep and pair_keep_probability).
"""

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import balance
from pipeline.common import beamio, records
from pipeline.match import stage as match
from pipeline.common.text import PUNCT_TO_WRAP

_matchcore = match._matchcore
needs_c = pytest.mark.skipif(_matchcore is None, reason="C core not built (see test_match_core_is_built)")

ASCII_WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f "
CAPTION_CHARS = list("ab Z09-'()&;" + ASCII_WHITESPACE) + list(PUNCT_TO_WRAP) + ["é", "\u00a0", "\u2028", "&amp;",
                                                                                  "&eacute;", "\x85", "x"]
URL_CHARS = list("aZ.:/?#%-" + ASCII_WHITESPACE) + ["http://", "https://", "HTTP://", "hTtPs://", "ftp://",
                                                     "http:/", "ſ", "é", "\u00a0"]


def url_text():
    return st.one_of(st.lists(st.sampled_from(URL_CHARS), max_size=12).map("".join),
                     st.builds(lambda pre, scheme, first, rest, post: pre + scheme + first + rest + post,
                               st.sampled_from(["", "", " ", "\t", "\x1f"]),
                               st.sampled_from(["http://", "https://", "HTTPS://", "hTTp://", "https:/", "http//"]),
                               st.sampled_from(list("aZ0/?#.") + ["", " ", "\x1c"]),
                               st.lists(st.sampled_from(list("aZ0.:/?#%-") + ["", "", "\x1d", " "]), max_size=8)
                               .map("".join),
                               st.sampled_from(["", "", " ", "\n", "\x1e"])))


ASCII_CAPTION_CHARS = [c for c in CAPTION_CHARS if c.isascii() and c != "&"]
caption_values = st.one_of(st.lists(st.sampled_from(ASCII_CAPTION_CHARS), max_size=30).map("".join),  # C decides
                           st.lists(st.sampled_from(["dog", "a", "N.Y.", "cat!"]), min_size=1, max_size=6)
                           .flatmap(lambda words: st.sampled_from(ASCII_WHITESPACE).map(lambda ws: ws.join(words))),
                           st.lists(st.sampled_from(CAPTION_CHARS), max_size=30).map("".join),
                           st.sampled_from([None, 7, b"bytes", "", "  ", "a", "ab"]))
url_values = st.one_of(url_text(), url_text(), st.sampled_from([None, "", 3.5, b"http://a/x"]))
rows_strategy = st.lists(st.tuples(url_values, caption_values,
                                   st.sampled_from([None, None, None, "", "malformed_row", "invalid_utf8"])),
                         max_size=25)
bounds_strategy = st.tuples(st.integers(0, 8), st.sampled_from([3, 10, 30, 2000]), st.integers(0, 4))


def test_match_core_is_built():
    # Never skipped: `pip install -e .` (make setup) builds the extension wherever gcc and the Python headers
    # exist; without it the stage still works, on the Python twins (several times the CPU per row).
    assert _matchcore is not None, "pipeline.common._matchcore not built: pip install -e . with a C compiler"
    assert records._c_uids is not None and beamio._c_buckets is not None


@needs_c
@settings(max_examples=400, deadline=None)
@given(rows_strategy, bounds_strategy, st.booleans())
def test_check_rows_equals_python_twin(rows, bounds, with_reasons):
    urls, captions = [r[0] for r in rows], [r[1] for r in rows]
    reasons = [r[2] for r in rows] if with_reasons else None
    assert match.check_rows(urls, captions, reasons, *bounds) == match.check_rows_py(urls, captions, reasons, *bounds)


@needs_c
def test_check_rows_on_named_cases():
    rows = [("http://a/1", "A dog, a cat."),                 # kept, spaced marks
            (" \x1fHTTPS://a/2?q=1\x1c ", "\x1c two\t\x1fwords  "),  # stripped url, whitespace collapsed
            ("http:///a", "a dog"),                           # no host
            ("http://a b", "a dog"),                          # whitespace inside the url
            ("ftp://a/1", "a dog"),
            ("http://a/3", " \t "),                           # empty after normalisation
            ("http://a/4", "abc"),                            # too short (min 5)
            ("http://a/5", "Caf&eacute;\u00a0au lait!"),      # Python path: unescape, NFC, unicode spaces
            (None, "a dog"), ("http://a/6", None), ("http://a/7", 5),
            ("httpſ://a/8", "a long caption")]                # non-ASCII url: the regex decides (IGNORECASE)
    urls, captions = [r[0] for r in rows], [r[1] for r in rows]
    got = match.check_rows(urls, captions, None, 5, 2000, 1)
    assert got == match.check_rows_py(urls, captions, None, 5, 2000, 1)
    row_ids, kept_urls, kept_captions, spaced, rejected = got
    assert row_ids == [0, 1, 7, 11]
    assert kept_urls == ["http://a/1", "HTTPS://a/2?q=1", "http://a/5", "httpſ://a/8"]
    assert kept_captions == ["A dog, a cat.", "two words", "Café au lait!", "a long caption"]
    assert spaced == [" A dog , a cat . ", " two words ", " Café au lait ! ", " a long caption "]
    assert rejected == [(2, match.NOT_HTTP_URL), (3, match.NOT_HTTP_URL), (4, match.NOT_HTTP_URL),
                        (5, match.EMPTY_CAPTION), (6, match.CAPTION_TOO_SHORT), (8, match.MISSING_URL),
                        (9, match.MISSING_CAPTION), (10, match.NON_STRING_CAPTION)]


@needs_c
def test_check_rows_word_and_length_bounds():
    captions = ["one", "one two", "one two three", "x" * 40]
    urls = ["http://a"] * len(captions)
    for bounds in [(0, 2000, 3), (0, 10, 1), (4, 2000, 2)]:
        assert match.check_rows(urls, captions, None, *bounds) == match.check_rows_py(urls, captions, None, *bounds)
    assert match.check_rows(urls, captions, None, 0, 2000, 3)[4] == [(i, match.TOO_FEW_WORDS) for i in (0, 1, 3)]
    assert match.check_rows(urls, captions, None, 0, 10, 1)[4] == [(i, match.CAPTION_TOO_LONG) for i in (2, 3)]


@needs_c
def test_check_rows_refuses_bad_arguments():
    with pytest.raises(ValueError, match="different lengths"):
        match.check_rows(["http://a"], [], None, 0, 10, 1)
    with pytest.raises(TypeError, match="sequence"):
        match.check_rows(5, ["a"], None, 0, 10, 1)


@needs_c
@given(st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, 2**31), st.integers(0, 2**31)), max_size=50),
       st.sampled_from([(0, 1), (1, 0), (2, 0)]))
def test_hit_columns_equal_python_twin(hits, fields):
    c_positions, c_ids = match.hit_columns(hits, *fields)
    py_positions, py_ids = match.hit_columns_py(hits, *fields)
    assert c_positions.tolist() == py_positions.tolist() and c_ids.tolist() == py_ids.tolist()


@needs_c
def test_hit_columns_refuses_short_tuples():
    with pytest.raises(TypeError, match="tuple"):
        match.hit_columns([(1, 2), (3,)], 0, 1)


@needs_c
@settings(max_examples=300)
@given(st.lists(st.tuples(st.text(max_size=300), st.text(max_size=300)), max_size=8))
def test_uids_equal_hashlib(pairs):
    urls, captions = [p[0] for p in pairs], [p[1] for p in pairs]
    assert records.uids_of(urls, captions) == records.uids_of_py(urls, captions)


@needs_c
def test_uids_across_block_boundaries_and_surrogates():
    # BLAKE2b compresses 128-byte blocks, the last one flagged: lengths around 1 and 2 blocks take every branch
    texts = ["x" * n for n in (0, 1, 63, 126, 127, 128, 129, 255, 256, 257, 1000)] + ["\ud800 lone", "é" * 70]
    urls = [t[: len(t) // 2] for t in texts]
    assert records.uids_of(urls, texts) == records.uids_of_py(urls, texts)
    assert records.uids_of(["http://a/1.jpg"], ["a dog"]) == [records.uid_of("http://a/1.jpg", "a dog")]
    with pytest.raises(TypeError, match="str"):
        records.uids_of([None], ["a"])


@needs_c
@settings(max_examples=300)
@given(st.lists(st.text(max_size=40) | st.text(alphabet="abc/:.", max_size=300), max_size=20),
       st.sampled_from([1, 2, 3, 16, 1000, 2**31 - 1]))
def test_buckets_equal_zlib_crc32(keys, n_buckets):
    # slicing by 8 in C: lengths below, at and past multiples of 8 bytes, non-ASCII and surrogates included
    assert beamio.buckets_of(keys, n_buckets).tolist() == beamio.buckets_of_py(keys, n_buckets).tolist()


@needs_c
def test_buckets_refuse_bad_input():
    with pytest.raises(ValueError, match="n_buckets"):
        beamio.buckets_of(["a"], 2**31)
    with pytest.raises(TypeError, match="str"):
        beamio.buckets_of([b"a"], 4)
    odd = ["\ud800x", "é" * 9]
    assert beamio.buckets_of(odd, 7).tolist() == [beamio.bucket_of(k, 7) for k in odd]


def test_stage_functions_without_the_c_core(monkeypatch):
    # Where the extension is not built, judge_batch and the bucket parts run on the Python twins: same results.
    from pipeline.match import pool
    rows = [{"source": f"p:{i}", "url": url, "caption": caption} for i, (url, caption) in enumerate([
        ("http://a/1", "A dog, in New York."), (" http://a/2 ", "new\tyork  at night"), ("ftp://a/3", "a dog"),
        ("http://a/4", "Caf&eacute; in New York!"), ("http://a/5", "nothing here"), ("http://a/6", None)])]
    matcher = match.QueryMatcher(["dog", "New York", "new york", "night"])

    def judged_and_parts():
        batch = pool.RowBatch.from_rows(rows)
        judged = match.judge_batch(batch, matcher, None, (), 5, 2000, 1)
        parts = match.BucketParts((), 4)
        parts.add(judged, batch)
        return judged.records(), judged.rejected, parts.send()

    built = judged_and_parts()
    monkeypatch.setattr(match, "_matchcore", None)
    monkeypatch.setattr(records, "_c_uids", None)
    monkeypatch.setattr(beamio, "_c_buckets", None)
    assert judged_and_parts() == built
    kept, rejected, _ = built
    assert [r["url"] for r in kept] == ["http://a/1", "http://a/2", "http://a/4"]
    assert [r["query_ids"] for r in kept] == [[0, 1], [2, 3], [1]]
    assert rejected == [(2, match.NOT_HTTP_URL), (5, match.MISSING_CAPTION), (4, match.NO_QUERY_MATCH)]


@needs_c
@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 40), min_size=1, max_size=6, unique=True), min_size=0, max_size=30),
       st.integers(1, 6), st.integers(-3, 2**40))
def test_metaclip_draws_equal_the_pure_functions(id_lists, t, seed):
    # Pairs whose entries all have count > t: the C draws and expected size equal metaclip_keep and
    # pair_keep_probability (same hashes, same double operations, round half to even).
    counts = {qid: t + 1 + (qid * 7919) % 50 for qid in range(41)}
    uids = [records.uid_of(f"http://x/{i}", "c") for i in range(len(id_lists))]
    offsets = np.cumsum([0] + [len(ids) for ids in id_lists]).astype(np.int64)
    flat = np.array([q for ids in id_lists for q in ids], np.int64)
    keep, expected = _matchcore.metaclip_draws(f"{seed}\x1f".encode(), uids, offsets, flat,
                                               np.array([counts[q] for q in flat], np.int64), t)
    want_keep, want_expected = balance.head_only_draws_py(seed, uids, id_lists, counts, t)
    assert list(keep) == [int(k) for k in want_keep] and expected == want_expected


@needs_c
def test_metaclip_draws_refuse_inconsistent_input():
    offsets, ids = np.array([0, 2], np.int64), np.array([1, 2], np.int64)
    with pytest.raises(ValueError, match="count <= t"):
        _matchcore.metaclip_draws(b"0\x1f", ["ab"], offsets, ids, np.array([5, 1], np.int64), 3)
    with pytest.raises(ValueError, match="do not describe"):
        _matchcore.metaclip_draws(b"0\x1f", ["ab", "cd"], offsets, ids, np.array([5, 5], np.int64), 3)


@pytest.mark.parametrize("mode", balance.MODES)
def test_decide_keep_without_the_c_core(monkeypatch, mode):
    # The balance stage's decisions and counters on the Python twin equal those on the C draws.
    rng = np.random.default_rng(3)
    rows = [{"uid": records.uid_of(f"http://x/{i}", "c"), "url": f"http://x/{i}", "caption": "c",
             "query_ids": sorted(set(rng.integers(0, 9, rng.integers(1, 4)).tolist()))} for i in range(400)]
    table = pa.Table.from_pylist(rows, schema=records.matched_schema())
    counts = balance.count_entries([(r["uid"], r["query_ids"]) for r in rows])
    thresholds = balance.strict_thresholds([(r["uid"], r["query_ids"]) for r in rows], counts, 30, 1)

    def decide():
        out = list(balance.DecideKeepFn(mode, 30, 1).process(table, counts, thresholds))
        return sorted(o.column("uid").to_pylist() for o in out if isinstance(o, pa.Table))

    built = decide()
    monkeypatch.setattr(balance, "_c_draws", None)
    assert decide() == built
    kept = set(built[0])
    assert kept == balance.select_pairs([(r["uid"], r["query_ids"]) for r in rows], 30, 1, mode)
