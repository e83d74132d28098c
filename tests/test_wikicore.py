"""Stage 1's C counting core gives exactly the counts of the Python reference (level 1: pure functions).

The reference is `wikicore.PySplitCounter` (`wikitext.strip_wiki_markup` + `text.tokenize` + Counters); the
C core (`pipeline/queries/_wikicore.c`) is compared with it on every page of a synthetic dump, on the markup
samples of test_wikitext.py, and on random wikitext built from markup fragments (Hypothesis).
`python -m bench.bench_queries` runs the same comparison on the real Wikipedia excerpt.
"""

import inspect

import pytest
from hypothesis import given, settings, strategies as st

from pipeline.common.beamio import bucket_of
from pipeline.queries import wikicore, wikidump, wikitext
from tests import native, test_queries, test_wikitext
from tests.wikidumps import write_multistream

needs_c = native.needs(wikicore._wikicore, "pipeline.queries._wikicore")


def test_c_core_is_built():
    # Optional where no C compiler exists (the stage runs the ~5x slower Python path); required in CI.
    native.check_built(wikicore._wikicore, "pipeline.queries._wikicore")


def counts(backend: str, pages: list[str]) -> tuple[list[int], tuple, list]:
    """(tokens per page, result(), parts()) of one counter fed all pages."""
    counter = wikicore.new_split_counter(backend)
    n_tokens = [counter.add_page(p) for p in pages]
    parts = sorted((kind, b, sorted(part.items())) for kind, b, part in counter.parts(7, bucket_of))
    return n_tokens, counter.result(), parts


def assert_same_counts(pages: list[str]):
    assert counts("c", pages) == counts("python", pages)
    for page in pages:  # page by page too: a difference in one page cannot hide in a sum
        assert counts("c", [page]) == counts("python", [page]), page


def _string_constants(module) -> list[str]:
    """Every string literal of a test module's functions that looks like wikitext (the markup samples)."""
    out = []
    for _, fn in inspect.getmembers(module, inspect.isfunction):
        code = fn.__code__
        consts = list(code.co_consts) + [c for sub in code.co_consts if hasattr(sub, "co_consts")
                                         for c in sub.co_consts]
        out += [c for c in consts if isinstance(c, str) and len(c) > 3]
    return out


@needs_c
def test_markup_samples_of_the_wikitext_tests():
    samples = _string_constants(test_wikitext) + test_wikitext.LINK_PIECES
    assert len(samples) > 20
    assert_same_counts(samples)


@needs_c
def test_every_page_of_a_synthetic_dump(tmp_path):
    pages = test_queries.ARTICLES + [
        {"title": "Turkey", "text": "'''İstanbul''' and ''ılık'' <REF>x</ref > <ſource>y</source> "
                                    "<İmagemap>z</imagemap> [httpſ://x.org label] http://K.org end"},
        {"title": "Entities", "text": "AT&T &amp; R&D &nbsp;&ndash;&#91;&#x5D;&#0;&#128;&#x110000;&copy2020 "
                                      "&ampx; &lt;ref&gt;hidden&lt;/ref&gt; &#10;&#12;&notit; &"},
        {"title": "Links", "text": "[[ wikt : dog ]] [[Zürich:x|y]] [[ZH-classical:x]] [[en-gb-oxendict:x]] "
                                   "[[#s|t]] [[ #s]] [[:Category:C#a|b|c]] [[a [[b]] c]] ]] [[x"},
        {"title": "Spaces", "text": "a\xa0b\u2003c\u3000d e\x85f\u2028g\u202fh\u205fi\u1680j\u200ak l\tm\rn"},
        {"title": "Tables", "text": "x\n :{| a\n{|\n|}\n|} y\n|}\n{| never closed\nz"},
    ]
    dump, _ = write_multistream(tmp_path, "enwiki", pages)
    texts = []
    for split in wikidump.plan_splits(str(dump)):
        for block in wikitext.iter_page_blocks(wikidump.read_split_text(split)):
            texts.append(wikitext.parse_page_block(block).text)
    assert len(texts) == len(pages)
    assert_same_counts(texts)


@needs_c
def test_hand_backs_are_counted():
    counter = wikicore.new_split_counter("c")
    counter.add_page("AT&T [[Zürich:x|y]] &nbsp; plain")
    assert counter.stats == {"pages": 1, "fallback_pieces": 2}   # '&T' and the non-ASCII link prefix


@needs_c
def test_clear_forgets_counts_and_parts_match_result():
    counter = wikicore.new_split_counter("c")
    assert counter.add_page("New York, New York") == 5
    words, pairs = counter.result()
    assert words == {"New": 2, "York": 2} and pairs == {("New", "York"): 2}
    assert counter.distinct_bigrams == 1
    counter.clear()
    assert counter.result() == ({}, {}) and counter.distinct_bigrams == 0
    assert counter.add_page("") == 0


# Fragments of real wikitext constructs, including the cases that are easy to get subtly wrong: Unicode
# whitespace (str.split), re.IGNORECASE folding (İ ı ſ K), entities without ';', unknown entities, numeric
# references outside the plain ranges, nested / unclosed / stray brackets, line-start table edges.
FRAGMENTS = [
    "{{", "}}", "{{cite|x=1}}", "{", "}", "[[", "]]", "[", "]", "|", "[[a|b]]", "[[a]]s", "[[File:x.png|thumb|",
    "[[fr:Paris]]", "[[:Category:X|y]]", "[[#s|t]]", "[[ wikt : dog ]]", "[[Zürich:x]]", "[[a#b]]",
    "<ref>", "</ref>", "<ref name=a/>", "<REF>", "</ref >", "<ſource>", "</source>", "<İmagemap>", "</imagemap>",
    "<math>x</math>", "<references/>", "<refs>", "<code", "<br/>", "<span class=x>", "</span>", "<", ">", "/>",
    "{|", "|}", "\n{|", "\n|}", "\n :{|", "\n", "'''", "''", "'", "'''''",
    "&amp;", "&nbsp;", "&lt;b&gt;", "&#91;", "&#x5D;", "&#0;", "&#128;", "&#x110000;", "&#55296;", "&copy",
    "&ampx;", "&notit;", "AT&T", "&", "&#", "&#x", "&;", "&#12;",
    "<!--", "-->", "<!-- c -->", "http://x.org/a", "https://y", "HTTPſ://z", "ftp://q", "://",
    "[http://x.org label]", "[//x.org]", "[ftp://a b\n]", "[https://a\tb]", "__NOTOC__", "__", "_",
    "\xa0", "\u2003", "\u3000", "\x1c", "\x85", "\u2028", "\u200b", "\t", "\r", " ", "  ",
    "Zürich", "İstanbul", "ılık", "K", "word", "New York", ",", ".", ";", ":", "?", "!", "`", "’", "don't",
    "e-mail", "1990", "x86", "*", "#", "=", "日本語", "\U0001F600", "a_b", "Ⅻ", "²",
]


@needs_c
@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join))
def test_random_wikitext_from_fragments(text):
    assert counts("c", [text]) == counts("python", [text])


@needs_c
@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_unicode_text(text):
    assert counts("c", [text]) == counts("python", [text])


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError):
        wikicore.new_split_counter("rust")


@needs_c
def test_word_tokens_decided_like_is_query_token():
    # the C core decides ASCII tokens itself and asks text.is_query_token about the others
    tokens = ["a-", "-a", "a--b", "a&&b", "'a", "a'", "1990", "x86", "a_b", "a+b", "AT&T", "e-mail", "rock'n'roll",
              "a’b", "Zürich", "١٢٣", "x²", "_", "&", "Ⅻ", "ǅ", "a\u0301"]
    assert_same_counts([" ".join(tokens), " ".join(reversed(tokens))])


