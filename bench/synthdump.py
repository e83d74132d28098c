"""Synthetic MediaWiki dumps whose vocabulary grows like real text, for stage 1 at full-dump cardinality.

Replicating a real excerpt grows the bytes but not the number of distinct words and bigrams; this
generator grows both the way text does. Word ranks are drawn from a Zipf-Mandelbrot (Lomax) law,
P(rank r) ~ (1 + r/q)^-a, an unbounded vocabulary whose distinct-word count follows Heaps' law
V(N) ~ N^(1/a); with probability p a word is instead one of its predecessor's `PARTNERS` fixed partners
(collocations), which sets how often bigrams repeat. (a, q, p) are fitted to the real excerpt's curves
of distinct words and distinct word bigrams against tokens (`calibrate`). Rank r is written as the
bijective base-26 word of r (a, b, ..., z, aa, ...): frequent words are short, as in English.

Used by bench/bench_queries_scale.py; numbers: BENCHMARKS.md, "Stage 1 at scale".
"""

from __future__ import annotations

import bz2
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.queries import wikicore, wikidump, wikitext
from pipeline.common.text import is_query_token

PARTNERS = 4           # fixed partners per word: a word's collocations
WORDS_PER_LINE = 16    # a line break is a '.' token to the counter: bigrams do not span it
LINES_PER_PAGE = 250   # ~4,000 tokens per page, the excerpt's articles' mean (433,928 tokens / 106)


@dataclass(frozen=True)
class TextModel:
    a: float   # tail exponent of the rank law (Heaps: V ~ N^(1/a))
    q: float   # head flattening: the most frequent word is not half of all tokens
    p: float   # chance that a word is one of its predecessor's partners


def lomax_ranks(u: np.ndarray, m: TextModel) -> np.ndarray:
    """Ranks (0, 1, ...) from uniforms in (0, 1) by inverting the Lomax law."""
    return np.floor(m.q * (u ** (-1.0 / (m.a - 1.0)) - 1.0)).clip(0, 2**62).astype(np.int64)


def draw_ranks(n: int, m: TextModel, rng: np.random.Generator) -> np.ndarray:
    """n word ranks of running text: independent draws, some replaced by a partner of the previous word."""
    ranks = lomax_ranks(rng.random(n), m)
    partner = rng.random(n) < m.p
    partner[0] = False
    prev = ranks[np.flatnonzero(partner) - 1].astype(np.uint64)
    j = rng.integers(0, PARTNERS, partner.sum()).astype(np.uint64)
    h = (prev * np.uint64(0x9E3779B97F4A7C15) + j * np.uint64(0xBF58476D1CE4E5B9)) >> np.uint64(11)
    ranks[partner] = lomax_ranks((h.astype(np.float64) + 0.5) / 2.0**53, m)
    return ranks


def curve(ranks: np.ndarray, breaks: np.ndarray, points: list[int]) -> list[tuple[int, int, int]]:
    """(tokens, distinct words, distinct bigrams) at each prefix length; no bigram spans a break."""
    out = []
    for n in points:
        r, b = ranks[:n], breaks[:n]
        pairs = np.stack([r[:-1], r[1:]], axis=1)[~b[1:]]
        out.append((n, len(np.unique(r)), len(np.unique(pairs, axis=0))))
    return out


def synthetic_curve(m: TextModel, points: list[int], seed: int = 0) -> list[tuple[int, int, int]]:
    ranks = draw_ranks(max(points), m, np.random.default_rng(seed))
    breaks = np.zeros(len(ranks), bool)
    breaks[::WORDS_PER_LINE] = True
    return curve(ranks, breaks, points)


def excerpt_curve(dump: str, n_points: int = 8) -> list[tuple[int, int, int]]:
    """The real excerpt's curve, tokenized as the stage tokenizes it (words only; other tokens break pairs)."""
    words: dict[str, int] = {}
    ranks, breaks = [], []
    for split in wikidump.plan_splits(dump):
        for block in wikitext.iter_page_blocks(wikidump.read_split_text(split)):
            page = wikitext.parse_page_block(block)
            if page.ns != 0 or page.redirect:
                continue
            was_break = True
            for token in wikicore.page_tokens(page.text):
                if not is_query_token(token):
                    was_break = True
                    continue
                ranks.append(words.setdefault(token, len(words)))
                breaks.append(was_break)
                was_break = False
    ranks_a, breaks_a = np.array(ranks, np.int64), np.array(breaks, bool)
    points = [len(ranks) * (k + 1) // n_points for k in range(n_points)]
    return curve(ranks_a, breaks_a, points)


def calibrate(target: list[tuple[int, int, int]]) -> tuple[TextModel, float]:
    """(a, q, p) fitted to a (tokens, words, bigrams) curve: (a, q) on a grid against the distinct words
    (p = 0), then p by bisection against the distinct bigrams at the longest prefix (fewer as p grows).
    Returns the model and its mean squared log error over the whole curve (words and bigrams)."""
    points = [n for n, _, _ in target]

    def words_error(m: TextModel) -> float:
        sim = synthetic_curve(m, points)
        return float(np.mean([np.log(s[1] / t[1]) ** 2 for s, t in zip(sim, target)]))

    grid = [TextModel(round(a, 2), q, 0.0) for a in np.arange(1.15, 2.01, 0.05) for q in (0.5, 1, 2, 4, 8, 16, 32)]
    a, q = (lambda m: (m.a, m.q))(min(grid, key=words_error))
    lo, hi = 0.0, 0.95
    for _ in range(12):
        mid = (lo + hi) / 2
        if synthetic_curve(TextModel(a, q, mid), [points[-1]])[0][2] > target[-1][2]:
            lo = mid
        else:
            hi = mid
    model = TextModel(a, q, round((lo + hi) / 2, 4))
    sim = synthetic_curve(model, points)
    err = float(np.mean([np.log(s[1] / t[1]) ** 2 + np.log(s[2] / t[2]) ** 2 for s, t in zip(sim, target)]))
    return model, err


def word_of(rank: int) -> str:
    """Bijective base 26: 0 -> 'a', 25 -> 'z', 26 -> 'aa', ..."""
    letters = []
    rank += 1
    while rank:
        rank, digit = divmod(rank - 1, 26)
        letters.append(chr(97 + digit))
    return "".join(reversed(letters))


def write_dump(path: Path, tokens: int, m: TextModel, seed: int = 0, chunk_pages: int = 50) -> dict:
    """A MediaWiki export of ~`tokens` word tokens ('.bz2' in the name: one bz2 stream).

    Returns {pages, tokens, words, bigrams}: the distinct words and within-line bigrams written."""
    rng = np.random.default_rng(seed)
    per_page = WORDS_PER_LINE * LINES_PER_PAGE
    pages = max(1, tokens // per_page)
    vocab: dict[int, str] = {}
    words_seen, pair_codes = [], []
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" xml:lang="en">\n')
        for start in range(0, pages, chunk_pages):
            n = min(chunk_pages, pages - start)
            ranks = draw_ranks(n * per_page, m, rng)
            uniq, inverse = np.unique(ranks, return_inverse=True)   # the tail reaches huge ranks: name only those used
            lines = ranks.reshape(-1, WORDS_PER_LINE)
            words_seen.append(np.unique(ranks))
            pair_codes.append(np.unique(np.stack([lines[:, :-1].ravel(), lines[:, 1:].ravel()], axis=1), axis=0))
            names = np.array([vocab.get(r) or vocab.setdefault(r, word_of(r)) for r in uniq.tolist()], dtype=object)
            words = names[inverse].reshape(n, LINES_PER_PAGE, WORDS_PER_LINE)
            for k in range(n):
                text = "\n".join(" ".join(line) for line in words[k])
                f.write(f"<page><title>Page {start + k}</title><ns>0</ns><id>{start + k + 1}</id><revision>"
                        f'<text xml:space="preserve">{text}</text></revision></page>\n')
        f.write("</mediawiki>\n")
    return {"pages": pages, "tokens": pages * per_page, "words": len(np.unique(np.concatenate(words_seen))),
            "bigrams": len(np.unique(np.concatenate(pair_codes), axis=0))}
