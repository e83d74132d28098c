"""Stage 1 (queries): pure functions, transforms on beam.Create data, end-to-end runs, bad input."""

import bz2
import io
import json
import math
from collections import Counter

import apache_beam as beam
import pytest
from hypothesis import given, strategies as st
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.queries import stage as Q
from pipeline.queries import wikicore, wikidump, wikitext
from pipeline.common.beamio import bucket_of
from tests.wikidumps import write_dump, write_multistream

FNAPI = ["--runner=FnApiRunner"]

# A small corpus with known counts: "New York" always together (a collocation), "the"/"city" everywhere.
ARTICLES = [
    {"title": "New York City", "text": "{{Infobox|name=NYC}}New York is a city. The city of New York is big.\n"
                                       "[[File:NYC.jpg|thumb|The skyline]] The [[Hudson River|river]] flows."},
    {"title": "Paris (city)", "text": "Paris is a city. The city has a river.<ref>{{cite|title=Paris}}</ref>"},
    {"title": "Zebra", "text": "The zebra is striped. Zebra stripes differ.\n{| class=wikitable\n| cell\n|}"},
    {"title": "Talk:Zebra", "ns": 1, "text": "talk page words words"},
    {"title": "NYC", "text": "#REDIRECT [[New York City]]", "redirect": "New York City"},
]


def run_stage(tmp_path, dump_args, out="out", extra=()):
    return Q.run([*dump_args, "--out", str(tmp_path / out), "--min-unigram-count", "2", "--min-pmi", "1",
                  "--min-bigram-count", "2", "--no-checksums", *FNAPI, *extra])


def read_rows(path):
    lines = path.read_text().splitlines()
    assert lines[0] == "query_id\tquery\tsource\tcount\tpmi"
    return [line.split("\t") for line in lines[1:]]


# ------------------------------------------------------------------ pure

def test_page_tokens_keep_lines_apart():
    assert wikicore.page_tokens("A b\nc d") == ["A", "b", ".", "c", "d"]


def test_bigram_pmi_matches_definition():
    # p(ab) = 4/100, p(a) = 5/100, p(b) = 8/100 -> log2(0.04 / 0.004) = log2(10)
    assert Q.bigram_pmi(4, 5, 8, 100) == pytest.approx(math.log2(10))
    assert Q.bigram_pmi(1, 1, 1, 2 ** 30) == pytest.approx(30.0)   # MetaCLIP's threshold in these units


def test_wordnet_head_lemma_like_nltk_synset_names():
    header = "  1 This software and database is being provided to you, the LICENSEE, by"
    noun = "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived"
    proper = "10002031 18 n 02 Albert_Einstein 0 Einstein 0 001 @ 10000007 n 0000 | physicist"
    adj = "00004296 00 s 02 galore(ip) 0 plentiful 0 001 & 00015247 a 0000 | in great numbers"
    assert Q.wordnet_head_lemma(header) is None
    assert Q.wordnet_head_lemma(noun) == "entity"
    assert Q.wordnet_head_lemma(proper) == "albert einstein"
    assert Q.wordnet_head_lemma(adj + "\r\n") == "galore"
    with pytest.raises(ValueError):
        Q.wordnet_head_lemma("not a wordnet line")


def test_parse_pageview_lines():
    assert Q.parse_pageview_line("en New_York_City 12 0") == ("New York City", 12)
    assert Q.parse_pageview_line("en.m Paris 3 0") == ("Paris", 3)
    assert Q.parse_pageview_line("de Berlin 5 0") is None
    assert Q.parse_pageview_line("Zebra\t40") == ("Zebra", 40)
    for bad in ("garbage", "en Title x 0", "Title\tmany"):
        with pytest.raises(ValueError):
            Q.parse_pageview_line(bad)


def test_title_to_entry():
    assert Q.title_to_entry("Mercury (planet)") == "Mercury"
    assert Q.title_to_entry("St. Louis") == "St . Louis"
    assert Q.title_to_entry("Template_talk:{{x}}") is None
    assert Q.title_to_entry("1990") is None


def test_merge_candidates_priority_and_fields():
    row = Q.merge_candidates("city", [("unigram", 9, None, 9), ("title", 3, None, 3), ("wordnet", None, None, 0)])
    assert row == ("city", "wordnet,unigram,title", 9, None, 0)
    rows = [("b", "unigram", 5, None, 5), ("a", "unigram", 5, None, 5), ("z", "wordnet", None, None, 0),
            ("c", "unigram", 7, None, 7), ("x", "bigram", 2, 3.5, 3.5)]
    assert [r[0] for r in sorted(rows, key=Q.rank_key)] == ["z", "c", "a", "b", "x"]


def test_merge_bucket_joins_the_candidates_of_a_query_from_every_source():
    unigram, title = ("unigram", 9, None, 9), Q.TITLE_CANDIDATE
    lists = [[("city", unigram), ("town", ("unigram", 3, None, 3))],
             [("city", title), ("Zebra", title)], [("city", title)],      # a title read by two splits
             [("city", Q.WORDNET_CANDIDATE)], []]
    rows = Q.merge_bucket(lists, n=10)
    assert rows == [("city", "wordnet,unigram,title", 9, None, 0), ("town", "unigram", 3, None, 3),
                    ("Zebra", "title", None, None, 0)]
    assert Q.merge_bucket(lists, n=2) == rows[:2]


def test_bucket_candidates_puts_a_query_in_the_bucket_of_its_text():
    pairs = [(q, Q.TITLE_CANDIDATE) for q in ("a", "b", "c", "d", "e", "a")]
    buckets = list(Q.bucket_candidates(pairs, 3))
    assert [b for b, _ in buckets] == sorted(b for b, _ in buckets)
    assert sorted(p for _, ps in buckets for p in ps) == sorted(pairs)
    assert all(Q.bucket_of(q, 3) == b for b, ps in buckets for q, _ in ps)


@given(st.lists(st.lists(st.tuples(st.text("abc", max_size=3), st.integers(0, 5)), max_size=8), max_size=6),
       st.integers(1, 6))
def test_keep_top_rows_is_the_first_n_of_all_rows_in_rank_order(lists, n):
    rows_lists = [[(q, "unigram", c, None, c) for q, c in rows] for rows in lists]
    fn = Q.KeepTopRowsFn(n)
    accs = []
    for i in range(0, len(rows_lists), 2):   # two inputs per accumulator, then merged
        acc = fn.create_accumulator()
        for rows in rows_lists[i:i + 2]:
            acc = fn.add_input(acc, list(rows))
        accs.append(acc)
    merged = fn.merge_accumulators(accs) if accs else fn.create_accumulator()
    everything = sorted((r for rows in rows_lists for r in rows), key=Q.rank_key)
    assert fn.extract_output(merged) == everything[:n]


def test_wordnet_candidates_read_a_file_as_text_lines(tmp_path):
    path = tmp_path / "data.noun"
    path.write_bytes(b"  1 licence header\r\n00001740 03 n 01 entity 0 003 | that which is\r\n"
                     b"garbage line\n00001741 03 n 01 New_York 0 000 | city")   # no final newline
    pairs = [p for _, ps in Q.wordnet_candidates(str(path), 4) for p in ps]
    assert sorted(pairs) == [("entity", Q.WORDNET_CANDIDATE), ("new york", Q.WORDNET_CANDIDATE)]


def test_split_counts_keeps_word_tokens_and_bigrams_of_words_only():
    uni = Counter({"New": 2, "York": 2, ",": 1, "(born": 1})
    bi = Counter({("New", "York"): 2, ("York", ","): 1, (",", "New"): 1})
    parts = list(wikicore.split_counts(uni, bi, buckets=4, bucket_of=bucket_of))
    merged_uni = {k: v for kind, _, part in parts if kind == "uni" for k, v in part.items()}
    merged_bi = {k: v for kind, _, part in parts if kind == "bi" for k, v in part.items()}
    assert merged_uni == {"New": 2, "York": 2}
    assert merged_bi == {("New", "York"): 2}


# ------------------------------------------------------------------ splits and reading

def test_multistream_splits_read_the_same_pages_as_the_whole_file(tmp_path):
    pages = [{"title": f"P{i}", "text": f"word{i} text"} for i in range(7)]
    dump, _ = write_multistream(tmp_path, "enwiki", pages, per_stream=2)
    splits = wikidump.plan_splits(str(dump), split_bytes=1)   # every stream its own split
    assert len(splits) == 5 and splits[0].start == 0 and splits[-1].end is None
    titles = []
    for s in splits:
        titles += [wikitext.parse_page_block(b).title
                   for b in wikitext.iter_page_blocks(wikidump.read_split_text(s))]
    assert titles == [f"P{i}" for i in range(7)]
    assert len(wikidump.plan_splits(str(dump), split_bytes=10 ** 9)) == 1


def test_truncated_bz2_raises_truncated_input(tmp_path):
    dump = write_dump(tmp_path / "d.xml.bz2", ARTICLES)
    dump.write_bytes(dump.read_bytes()[:-40])
    with pytest.raises(wikitext.TruncatedInput):
        list(wikidump.read_split_text(wikidump.WikiSplit(str(dump), bz2=True)))


def _bz2_cases():
    texts = [" ".join(f"s{i}w{j * 7919 % 100_003}" for j in range(30_000)).encode() for i in range(4)]
    streams = [bz2.compress(t) for t in texts]   # ~60 KB each: a cut inside a stream stays inside it
    good = b"".join(streams)
    s0 = len(streams[0])
    flipped = bytearray(good)
    flipped[s0 + 200] ^= 0xFF
    return {"good": good, "truncated": good[:-40], "cut_in_stream": good[:s0 + 1000],
            "garbage_between_streams": good[:s0] + b"garbage!" + good[s0:], "trailing_garbage": good + b"\n\n",
            "one_trailing_byte": good + b"\0", "one_byte_between_streams": good[:s0] + b"j" + good[s0:],
            "bit_flip": bytes(flipped), "not_bz2": b"hello", "empty": b""}, [0, s0, s0 + len(streams[1])], texts


def _decompress(data, fast, start=0, end=None):
    out = bytearray()
    try:
        for chunk in wikidump.decompress_bz2_range(io.BytesIO(data), start, end, fast=fast):
            out += chunk
    except (wikitext.TruncatedInput, wikitext.CorruptInput) as e:
        return bytes(out), type(e).__name__
    return bytes(out), None


@pytest.mark.parametrize("case", list(_bz2_cases()[0]))
def test_fast_bz2_path_gives_the_bytes_and_errors_of_python_bz2(case):
    pytest.importorskip("indexed_bzip2")
    data = _bz2_cases()[0][case]
    fast, reference = _decompress(data, fast=True), _decompress(data, fast=False)
    assert fast == reference
    assert (reference[1] is None) == (case in ("good", "empty"))


def test_fast_bz2_path_reads_a_range_of_streams():
    pytest.importorskip("indexed_bzip2")
    cases, offsets, texts = _bz2_cases()
    good = cases["good"]
    middle = _decompress(good, fast=True, start=offsets[1], end=offsets[2])
    assert middle == _decompress(good, fast=False, start=offsets[1], end=offsets[2])
    assert middle == (texts[1], None)


def test_stdlib_bz2_alone_without_the_optional_decoder(tmp_path, monkeypatch):
    monkeypatch.setattr(wikidump, "indexed_bzip2", None)
    cases = _bz2_cases()[0]
    assert _decompress(cases["good"], fast=True) == _decompress(cases["good"], fast=False)
    assert _decompress(cases["truncated"], fast=True)[1] == "TruncatedInput"


# ------------------------------------------------------------------ transforms

def _unigram_items(kv):
    return list(kv[1][0].items())


def _bigram_items(kv):
    return list(kv[1][1].items())


def test_count_wikipedia_words_transform(tmp_path):
    dump = write_dump(tmp_path / "d.xml", ARTICLES)
    with TestPipeline(argv=FNAPI) as p:
        out = p | beam.Create([wikidump.WikiSplit(str(dump))]) | Q.CountWikipediaWords(buckets=3, max_keys=10 ** 6)
        counts = (out["bucket_counts"] | "U" >> beam.FlatMap(_unigram_items)
                  | "SomeWords" >> beam.Filter(lambda kv: kv[0] in ("city", "New", "York", "zebra", "talk")))
        assert_that(counts, equal_to([("city", 4), ("New", 2), ("York", 2), ("zebra", 1)]), label="Unigrams")
        ny = (out["bucket_counts"] | "B" >> beam.FlatMap(_bigram_items)
              | "SomeBigrams" >> beam.Filter(lambda kv: kv[0] in (("New", "York"), ("city", "The"))))
        assert_that(ny, equal_to([(("New", "York"), 2)]), label="Bigrams")   # "city . The" spans a sentence
        # titles: one list per split
        assert_that(out["titles"], equal_to([["New York City", "Paris (city)", "Zebra"]]), label="Titles")
        reference = wikicore.PySplitCounter()
        for article in ARTICLES[:3]:   # the three articles (not the talk page, not the redirect)
            reference.add_page(article["text"])
        assert_that(out["total"], equal_to([sum(reference.result()[0].values())]), label="Total")


def test_score_bigrams_transform_joins_counts_across_buckets():
    total, k = 100, 4
    unigram_counts = {"New": 5, "York": 8, "the": 50, "city": 40, "rare": 1, "pair": 1}
    bigram_counts = {("New", "York"): 4, ("the", "city"): 4, ("rare", "pair"): 1}
    buckets = {}
    for w, n in unigram_counts.items():
        buckets.setdefault(Q.bucket_of(w, k), ({}, {}))[0][w] = n
    for (a, b), n in bigram_counts.items():
        buckets[Q.bucket_of(a, k)][1][(a, b)] = n
    with TestPipeline(argv=FNAPI) as p:
        bucket_counts = p | "C" >> beam.Create(sorted(buckets.items()))
        n = p | "N" >> beam.Create([total])
        out = (bucket_counts, n) | Q.ScoreBigrams(buckets=k, min_count=2, min_pmi=2.0)
        pmi = Q.bigram_pmi(4, 5, 8, total)
        assert pmi == pytest.approx(math.log2(4 * 100 / 40))
        # "the city": log2(4*100/2000) < 2; candidates come as one list per bucket of the query
        expected = [(Q.bucket_of("New York", k), [("New York", ("bigram", 4, pmi, pmi))])]
        assert_that(out, equal_to(expected))


# ------------------------------------------------------------------ end to end

def test_end_to_end_run(tmp_path):
    dump = write_dump(tmp_path / "enwiki.xml.bz2", ARTICLES)
    wn = tmp_path / "wn"
    wn.mkdir()
    (wn / "data.noun").write_text("  1 licence header\n00001740 03 n 01 zebra 0 000 | striped\n"
                                  "00001741 03 n 01 New_York 0 000 | city\n")
    for f in ("data.verb", "data.adj", "data.adv"):
        (wn / f).write_text("  1 licence header\n")
    m = run_stage(tmp_path, ["--dump", str(dump), "--wordnet", str(wn)])
    rows = read_rows(tmp_path / "out" / "queries.tsv")
    by_query = {r[1]: r for r in rows}
    assert [r[0] for r in rows] == [str(i) for i in range(len(rows))]
    assert rows[0][1:3] == ["new york", "wordnet"] and rows[1][1:3] == ["zebra", "wordnet"]
    assert by_query["city"][2:4] == ["unigram", "4"]
    assert by_query["New York"][2].startswith("bigram")
    assert by_query["New York City"][2] == "title" and by_query["Paris"][2] == "title"
    assert not {"Infobox", "NYC", "thumb", "skyline", "cite", "wikitable", "cell", "talk"} & set(by_query)
    assert m["counters"] == {"read": 5, "kept": 3, "rejected": {"not_article": 1, "redirect": 1}}
    assert m["sources"]["entries"] == len(rows)
    saved = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert saved["counters"] == m["counters"] and saved["inputs"][0]["bytes"] == dump.stat().st_size


def test_max_entries_truncates_lowest_priority_first(tmp_path):
    dump = write_dump(tmp_path / "d.xml", ARTICLES)
    run_stage(tmp_path, ["--dump", str(dump)], out="all")
    run_stage(tmp_path, ["--dump", str(dump)], out="top", extra=["--max-entries", "3"])
    everything = read_rows(tmp_path / "all" / "queries.tsv")
    assert read_rows(tmp_path / "top" / "queries.tsv") == everything[:3]
    assert {r[2] for r in everything[:3]} == {"unigram"} and everything[-1][2] == "title"
    counts = [int(r[3]) for r in everything[:3]]
    assert counts == sorted(counts, reverse=True)


def test_a_dump_without_articles_still_writes_an_empty_list(tmp_path):
    dump = write_dump(tmp_path / "d.xml", [a for a in ARTICLES if a.get("redirect") or a.get("ns")])
    m = run_stage(tmp_path, ["--dump", str(dump)])
    assert read_rows(tmp_path / "out" / "queries.tsv") == []
    assert m["sources"]["entries"] == 0 and m["counters"]["kept"] == 0 and m["counters"]["read"] == 2


def test_pageviews_filter_titles(tmp_path):
    dump = write_dump(tmp_path / "d.xml", ARTICLES)
    views = tmp_path / "views.txt"
    views.write_text("en Zebra 50 0\nen Zebra 30 0\nen Paris_(city) 10 0\nde Zebra 999 0\nbroken line\n")
    m = run_stage(tmp_path, ["--dump", str(dump)], extra=["--pageviews", str(views), "--min-pageviews", "70"])
    rows = {r[1]: r for r in read_rows(tmp_path / "out" / "queries.tsv")}
    assert rows["Zebra"][2:4] == ["title", "80"] and "Paris" not in rows and "New York City" not in rows
    assert m["other_counters"]["pageview_lines"] == 5 and m["other_counters"]["pageview_lines_bad"] == 1


@pytest.mark.slow
def test_same_bytes_on_one_or_two_workers_and_whole_or_multistream(tmp_path):
    pages = ARTICLES * 3
    pages = [dict(p, title=f"{p['title']} {i}") for i, p in enumerate(pages)]
    whole = write_dump(tmp_path / "whole.xml.bz2", pages)
    multi, _ = write_multistream(tmp_path, "enwiki", pages, per_stream=2)
    run_stage(tmp_path, ["--dump", str(whole)], out="a")
    run_stage(tmp_path, ["--dump", str(multi), "--split-mb", "1"], out="b",
              extra=["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    a = (tmp_path / "a" / "queries.tsv").read_bytes()
    assert a == (tmp_path / "b" / "queries.tsv").read_bytes()
    assert len(a.splitlines()) > 10


# ------------------------------------------------------------------ bad input

def test_truncated_stream_and_malformed_page_are_counted_and_the_run_goes_on(tmp_path):
    good = write_dump(tmp_path / "a.xml", ARTICLES)
    broken = tmp_path / "b.xml"
    broken.write_text(good.read_text().replace("<title>Zebra</title>", "<title>Zebra</titel>"))
    cut = write_dump(tmp_path / "c.xml.bz2", ARTICLES)
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])
    m = run_stage(tmp_path, ["--dump", str(tmp_path / "*.xml"), "--dump", str(cut)])
    rejected = m["counters"]["rejected"]
    assert rejected["malformed_page"] == 1 and rejected["truncated_stream"] == 1
    assert m["counters"]["kept"] >= 5


@pytest.mark.parametrize("content, message", [
    (None, "no file matches"),
    (b"", "is empty"),
    (b"caption\turl\nhello\thttp://x\n", "is not a MediaWiki export"),
    (bz2.compress(b"just some text, not xml"), "is not a MediaWiki export"),
    (b"BZh91AY&SY garbage", "cannot read"),
])
def test_bad_inputs_stop_with_one_clear_message(tmp_path, content, message):
    path = tmp_path / ("in.xml.bz2" if content and content.startswith(b"BZh") else "in.xml")
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit) as e:
        run_stage(tmp_path, ["--dump", str(path)])
    assert str(e.value).startswith("queries: ") and message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_wordnet_files_is_a_clear_error(tmp_path):
    dump = write_dump(tmp_path / "d.xml", ARTICLES)
    with pytest.raises(SystemExit, match="WordNet folder .* lacks"):
        run_stage(tmp_path, ["--dump", str(dump), "--wordnet", str(tmp_path)])


@given(st.dictionaries(st.tuples(st.sampled_from("abcdef"), st.sampled_from("abcdef")), st.integers(1, 50),
                       min_size=1),
       st.floats(0.0, 8.0))
def test_pmi_bound_prunes_no_bigram_that_reaches_min_pmi(pairs, min_pmi):
    unigrams = {}
    for (a, b), n in pairs.items():   # counts consistent with a corpus: c(a), c(b) >= c(ab)
        unigrams[a] = unigrams.get(a, 0) + n
        unigrams[b] = unigrams.get(b, 0) + n
    total = sum(unigrams.values())
    attached = {k: v for _, part in Q.attach_first_counts((0, (unigrams, pairs)), 1, 1, total, min_pmi)
                for k, v in part.items()}
    reaching = {ab for ab, n in pairs.items() if Q.bigram_pmi(n, unigrams[ab[0]], unigrams[ab[1]], total) >= min_pmi}
    assert reaching <= set(attached)


def test_count_buckets_grow_with_the_input_from_16():
    mb = 1 << 20
    assert Q.count_buckets_for([("a.xml.bz2", 2 * mb)]) == 16                       # the excerpt, the demo
    assert Q.count_buckets_for([("a.xml", 256 * mb * 40)]) == 40                    # a bucket per 256 MB of XML
    assert Q.count_buckets_for([("a.xml.bz2", 22_000 * mb), ("b.xml", 0)]) == 310   # ~22 GB bz2 = 3.6x as XML


def test_same_bytes_with_any_bucket_count(tmp_path):
    dump = write_dump(tmp_path / "d.xml", ARTICLES * 2)
    outputs = []
    for buckets in ("0", "1", "64"):
        m = run_stage(tmp_path, ["--dump", str(dump)], out=f"b{buckets}", extra=["--count-buckets", buckets])
        assert m["settings"]["count_buckets"] == (16 if buckets == "0" else int(buckets))
        outputs.append((tmp_path / f"b{buckets}" / "queries.tsv").read_bytes())
    assert outputs[0] == outputs[1] == outputs[2] and len(outputs[0].splitlines()) > 5
