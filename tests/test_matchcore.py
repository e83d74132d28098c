"""The match stage's C core (pipeline/common/_matchcore.c) equals its Python twins (level 1: pure functions).

`check_rows` is held to `match.check_rows_py` (steps 1-3 of the recipe: raw checks, normalisation, URL and length
filters, MetaCLIP spacing) on rows built from the characters where the two could disagree: every ASCII
whitespace character Python's str.split()/strip() and the regex class \\s know (\\x1c-\\x1f included), the
punctuation marks of text.PUNCT_TO_WRAP, URL delimiters, scheme spellings, '&' references, non-ASCII letters
and spaces, non-string values and readers' reasons. `hit_columns` is held to its twin on generated input.
fuzz/targets.py holds both to their twins on arbitrary input (make fuzz; make test runs it briefly).
The uids and buckets the stages write are hashlib's BLAKE2b and zlib's CRC-32: pinned here by values written
out by hand, since a changed uid or bucket would change every output file.
"""

import hashlib
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.common import beamio, records
from pipeline.common.text import PUNCT_TO_WRAP
from pipeline.match import stage as match
from tests import native

_matchcore = match._matchcore
needs_c = native.needs(_matchcore, "pipeline.common._matchcore")

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
    # Optional where no C compiler exists (the stage runs the twins); required in CI.
    native.check_built(_matchcore, "pipeline.common._matchcore")


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
       st.sampled_from([(0, 1), (1, 0), (2, 0), (-1, -2), (0, -3)]))
def test_hit_columns_equal_python_twin(hits, fields):
    c_positions, c_ids = match.hit_columns(hits, *fields)
    py_positions, py_ids = match.hit_columns_py(hits, *fields)
    assert c_positions.tolist() == py_positions.tolist() and c_ids.tolist() == py_ids.tolist()


@needs_c
def test_hit_columns_refuses_short_tuples():
    for fields in ((0, 1), (-1, -2)):
        with pytest.raises(IndexError):
            match.hit_columns([(1, 2), (3,)], *fields)
        with pytest.raises(IndexError):
            match.hit_columns_py([(1, 2), (3,)], *fields)
    with pytest.raises(TypeError, match="tuple"):
        match.hit_columns([[1, 2]], 0, 1)


@needs_c
def test_hit_columns_count_negative_fields_from_the_end():
    # Found by fuzz/targets.py (tests/fuzz_corpus/hit_columns/negative-field-numbers): the C refused field -1,
    # which its twin's operator.itemgetter reads as the last one.
    hits = [(5, 7, 9), (6, 8, 10)]
    for fields, want in (((-1, -3), ([9, 10], [5, 6])), ((-2, 0), ([7, 8], [5, 6]))):
        got = match.hit_columns(hits, *fields)
        assert (got[0].tolist(), got[1].tolist()) == want
        py = match.hit_columns_py(hits, *fields)
        assert (py[0].tolist(), py[1].tolist()) == want


UIDS = [("http://a/1.jpg", "a dog", "b1e19f972194944d020279c70b1adaf9"),
        ("https://example.com/x.png", "Café au lait", "0a350d65d039db6dff15ea9594d4fe5a"),
        ("", "", "01d40548a78e70851885ebb185b56016"),
        ("lone \ud800", "x", "6b3db8410538837a2720baea6b69ea68")]  # a surrogate: its 'surrogatepass' bytes


def test_uids_are_blake2b_128_of_url_unit_separator_caption():
    urls, captions, known = zip(*UIDS)
    assert records.uids_of(list(urls), list(captions)) == list(known)
    assert [records.uid_of(u, c) for u, c in zip(urls, captions)] == list(known)
    assert known[0] == hashlib.blake2b(b"http://a/1.jpg\x1fa dog", digest_size=16).hexdigest()


BUCKETS = {"http://a/1.jpg": (1911374777, {1: 0, 16: 7, 1000: 445, 2**31 - 1: 955687388}),
           "": (0, {1: 0, 16: 0, 1000: 0, 2**31 - 1: 0}),
           "é\ud800": (3127988131, {1: 0, 16: 11, 1000: 728, 2**31 - 1: 1563994064})}


def test_buckets_are_zlib_crc32_scaled():
    keys = list(BUCKETS)
    for n_buckets in (1, 16, 1000, 2**31 - 1):
        want = [BUCKETS[k][1][n_buckets] for k in keys]
        assert beamio.buckets_of(keys, n_buckets).tolist() == want
        assert [beamio.bucket_of(k, n_buckets) for k in keys] == want
    assert zlib.crc32(b"http://a/1.jpg") == BUCKETS["http://a/1.jpg"][0]


def test_buckets_refuse_bad_input():
    with pytest.raises(ValueError, match="n_buckets"):
        beamio.buckets_of(["a"], 2**31)
    with pytest.raises(AttributeError):
        beamio.buckets_of([b"a"], 4)


def test_stage_functions_without_the_c_core(monkeypatch):
    # Where the extension is not built, judge_batch and the bucket parts run on the Python twins: same results.
    from pipeline.match import pool
    from tests.test_match import records_of
    rows = [{"source": f"p:{i}", "url": url, "caption": caption} for i, (url, caption) in enumerate([
        ("http://a/1", "A dog, in New York."), (" http://a/2 ", "new\tyork  at night"), ("ftp://a/3", "a dog"),
        ("http://a/4", "Caf&eacute; in New York!"), ("http://a/5", "nothing here"), ("http://a/6", None)])]
    matcher = match.QueryMatcher(["dog", "New York", "new york", "night"])

    def judged_and_parts():
        batch = pool.RowBatch.from_rows(rows)
        judged = match.judge_batch(batch, matcher, None, (), 5, 2000, 1)
        parts = match.BucketParts((), 4)
        parts.add(judged, batch)
        return records_of(judged), judged.rejected, parts.send()

    built = judged_and_parts()
    monkeypatch.setattr(match, "_matchcore", None)
    assert judged_and_parts() == built
    kept, rejected, _ = built
    assert [r["url"] for r in kept] == ["http://a/1", "http://a/2", "http://a/4"]
    assert [r["query_ids"] for r in kept] == [[0, 1], [2, 3], [1]]
    assert rejected == [(2, match.NOT_HTTP_URL), (5, match.MISSING_CAPTION), (4, match.NO_QUERY_MATCH)]
