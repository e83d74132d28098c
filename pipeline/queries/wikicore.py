"""Stage 1's counting core: an article's wikitext -> counts of its word unigrams and word bigrams.

In:  article wikitext, one page at a time (`SplitCounter.add_page`).
Out: `result()` -> ({word: n}, {(a, b): n}); `parts(buckets, bucket_of)` -> the same counts
     cut into ('uni'|'bi', bucket, {key: n}) parts, a bigram in the bucket of its first word.
Run: by `queries.CountSplitWordsFn`; `python -m bench.bench_queries` measures it and checks C == Python.

Two implementations with one interface and identical results:
- `pipeline.queries._wikicore.SplitCounter` (C, `pipeline/queries/_wikicore.c`, built at `pip install` time when a C
  compiler is present): the same passes as `wikitext.strip_wiki_markup`, tokenization and counting in
  one call per page, tokens interned so that a bigram is a pair of ints, not a tuple of strings
  (4.7x less counting CPU than the reference on the excerpt). It hands back to the Python functions the
  rare pieces it does not reproduce itself (unusual entities, non-ASCII link prefixes: 0.2 per article
  on the excerpt); `stats` counts them.
- `PySplitCounter`: the readable reference, `page_tokens` + `collections.Counter` + `split_counts`. It is
  the specification the C core is tested against (tests/test_wikicore.py: every page of a synthetic
  dump, the markup samples, Hypothesis on random wikitext), and the fallback when the extension could
  not be built (logged once per worker by the stage).
Only word tokens (`text.is_query_token`) are kept in the results; `add_page` returns the page's number
of tokens of any kind (0: an empty page).
"""

from __future__ import annotations

import html
import html.entities
import logging
from collections import Counter
from typing import Callable, Iterator

from pipeline.queries import wikitext
from pipeline.common.text import is_query_token, tokenize

log = logging.getLogger(__name__)


def page_tokens(page_text: str) -> list[str]:
    """Tokens of an article's prose; a '.' token between lines keeps bigrams from spanning them."""
    return tokenize(wikitext.strip_wiki_markup(page_text).replace("\n", " . "))


def split_counts(unigrams: dict, bigrams: dict, buckets: int,
                 bucket_of: Callable[[str, int], int]) -> Iterator[tuple[str, int, dict]]:
    """('uni'|'bi', bucket, {key: count}) parts of one split's counts; only word tokens are kept."""
    word_bucket = {w: bucket_of(w, buckets) for w in unigrams if is_query_token(w)}
    uni_parts: dict[int, dict] = {}
    for w, b in word_bucket.items():
        uni_parts.setdefault(b, {})[w] = unigrams[w]
    bi_parts: dict[int, dict] = {}
    for (a, b), c in bigrams.items():
        if a in word_bucket and b in word_bucket:
            bi_parts.setdefault(word_bucket[a], {})[(a, b)] = c
    for b, part in sorted(uni_parts.items()):
        yield "uni", b, part
    for b, part in sorted(bi_parts.items()):
        yield "bi", b, part


class PySplitCounter:
    """The reference counter: `page_tokens`, then Counters of tokens and adjacent token pairs."""

    def __init__(self):
        self.unigrams, self.bigrams = Counter(), Counter()
        self.stats = {"pages": 0, "fallback_pieces": 0}   # the C core's counters; the reference hands nothing back

    def add_page(self, page_text: str) -> int:
        tokens = page_tokens(page_text)
        self.unigrams.update(tokens)
        self.bigrams.update(zip(tokens, tokens[1:]))
        self.stats["pages"] += 1
        return len(tokens)

    @property
    def distinct_bigrams(self) -> int:
        """Distinct bigrams held (all tokens: an upper bound of the result's word bigrams)."""
        return len(self.bigrams)

    def result(self) -> tuple[dict, dict]:
        words = {w: n for w, n in self.unigrams.items() if is_query_token(w)}
        pairs = {ab: n for ab, n in self.bigrams.items() if ab[0] in words and ab[1] in words}
        return words, pairs

    def parts(self, buckets: int, bucket_of: Callable[[str, int], int]) -> list[tuple[str, int, dict]]:
        return list(split_counts(self.unigrams, self.bigrams, buckets, bucket_of))

    def clear(self) -> None:
        self.unigrams.clear()
        self.bigrams.clear()


try:
    from pipeline.queries import _wikicore
except ImportError as e:  # built without a C compiler: pip skips the optional extension
    _wikicore = None
    log.warning("pipeline.queries._wikicore is not built (%s): stage 1 counts on the Python path (~5x the CPU)", e)

BACKEND = "C (pipeline.queries._wikicore)" if _wikicore else "Python (pipeline.queries.wikicore.PySplitCounter)"


def new_split_counter(backend: str = "auto"):
    """A SplitCounter: the C one unless `backend` is 'python' (or the extension is not built)."""
    if backend not in ("auto", "c", "python"):
        raise ValueError(f"unknown backend {backend!r}")
    if backend == "c" and _wikicore is None:
        raise RuntimeError("pipeline.queries._wikicore is not built (reinstall with a C compiler: pip install -e .)")
    if backend == "python" or _wikicore is None:
        return PySplitCounter()
    return _wikicore.SplitCounter(is_query_token, wikitext.link_text, html.unescape, html.entities.html5)
