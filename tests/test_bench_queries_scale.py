"""bench/synthdump.py: the synthetic dumps are valid MediaWiki exports whose distinct words and bigrams, as
the stage counts them, are the ones the generator reports; the text model's laws hold."""

from __future__ import annotations

import numpy as np

from bench import synthdump
from bench.bench_queries_scale import MODEL
from pipeline.queries import wikicore, wikidump, wikitext


def test_generated_dump_counts_as_the_generator_says(tmp_path):
    dump = tmp_path / "synthetic.xml"
    info = synthdump.write_dump(dump, 30_000, MODEL, seed=3)
    counter = wikicore.PySplitCounter()
    pages = 0
    for split in wikidump.plan_splits(str(dump)):
        for block in wikitext.iter_page_blocks(wikidump.read_split_text(split)):
            page = wikitext.parse_page_block(block)
            assert page.ns == 0 and not page.redirect
            counter.add_page(page.text)
            pages += 1
    words, bigrams = counter.result()
    assert pages == info["pages"] == 7 and sum(words.values()) == info["tokens"] == 7 * 4000
    assert (len(words), len(bigrams)) == (info["words"], info["bigrams"])


def test_word_names_are_bijective_base_26():
    assert [synthdump.word_of(r) for r in (0, 25, 26, 27, 701, 702)] == ["a", "z", "aa", "ab", "zz", "aaa"]


def test_more_tokens_more_distinct_words_sublinearly():
    curve = synthdump.synthetic_curve(MODEL, [10_000, 80_000])
    (n0, w0, b0), (n1, w1, b1) = curve
    assert w0 < w1 < 8 * w0 and b0 < b1 < 8 * b0 and w1 < b1
    ranks = synthdump.draw_ranks(50_000, synthdump.TextModel(MODEL.a, MODEL.q, 0.0), np.random.default_rng(0))
    assert (ranks == 0).mean() > (ranks == 10).mean() > (ranks == 1000).mean()   # Zipf: frequency falls with rank
