"""Stage 1 (`make queries`): the query list from English Wikipedia word counts, as CLIP/MetaCLIP built it.

In:  MediaWiki export dump(s) (`--dump`, globs, local or fsspec; multistream bz2 split by stream groups),
     WordNet 3.0 database files (`--wordnet DIR`), optional page-view counts (`--pageviews GLOB`).
Out: `<out>/queries.tsv` (`query_id, query, source, count, pmi`), `<out>/source_stats.json`,
     `<out>/manifest.json` (settings, inputs with checksums, pages read/kept/rejected by reason).

The recipe is MetaCLIP's `build_metadata.py` (Xu et al. 2023, "Demystifying CLIP Data"):
- unigrams: whole tokens (`pipeline.common.text.tokenize`, the matcher's own semantics) with count >= 100;
- bigrams: pointwise mutual information log2(c(ab) * N / (c(a) * c(b))) >= 30, N = counted word tokens
  (NLTK's `BigramAssocMeasures.pmi`, which MetaCLIP used: log base 2, no count floor of its own);
- article titles: all article titles, or those with >= 70 page views in the given page-view files;
- WordNet synsets: the head lemma of every synset, lower-cased with '_' -> ' ' (NLTK's synset name).
Priority when merging into at most `--max-entries` (500,000): wordnet, unigram, bigram, title (MetaCLIP's
order); within a source by count (unigram), PMI (bigram), page views (title), then the query's code
points, so the list is a total order and the file is byte-identical on any runner and worker count.

Run: python -m pipeline.queries --dump 'dumps/enwiki-*-multistream.xml.bz2' --wordnet data/wordnet-3.0 \
        --out queries/enwiki [--runner=... any Beam options]
How counting scales (pre-aggregation, buckets, the PMI join): the comment below the imports.
Numbers: BENCHMARKS.md, "Stage 1".
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import logging
import math
import re
import sys
import time
from collections import Counter
from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from pipeline.common import beamio, beamrun, files, manifest
from pipeline.queries import wikicore, wikidump, wikitext
from pipeline.common.beamio import add_counts, bucket_of  # bucket_of: stable across processes, unlike hash()
from pipeline.common.records import QUERY_LIST_HEADER
from pipeline.common.text import is_query_token, normalize_entry
from pipeline.common.logs import setup_logging

# How counting scales
#
# Counting is pre-aggregated: each split (a file, or ~64 MB of bz2 streams) counts its pages into one
# `wikicore` SplitCounter (a C extension: markup stripping, tokenizing and counting in one call per page,
# with identical results to the Python reference in `wikitext`/`text`, see pipeline/queries/wikicore.py) and emits
# one ({word: n}, {(a, b): n}) pair per hash bucket, so Beam handles a few dicts per split instead of one
# element per word (Beam's per-element cost would otherwise dominate, see DESIGN.md). The bigram dicts
# cross one shuffle; the first PMI join then drops every bigram whose first word is too frequent to reach
# the PMI threshold (exact: pmi(a, b) <= log2(N / c(a))). Titles travel as one list per split, WordNet as
# one element per file, and every source hands its candidates to the merge as (bucket of the query,
# [(query, candidate)]) lists: one GroupByKey merges each bucket's queries, one global combine keeps the
# first `--max-entries`. Measured: BENCHMARKS.md, "Stage 1".

log = logging.getLogger(__name__)
NS = "queries"  # Beam counter namespace

# MetaCLIP defaults (build_metadata.py)
MIN_UNIGRAM_COUNT = 100
MIN_PMI = 30.0
MIN_BIGRAM_COUNT = 1          # MetaCLIP applies no count floor beyond its n-gram input file
MIN_PAGEVIEWS = 70
MAX_ENTRIES = 500_000         # CLIP paper: "a list of 500,000 queries"
COUNT_BUCKETS = 16            # hash buckets the word counts are merged in
MAX_KEYS_PER_WORKER = 4_000_000

SOURCES = ("wordnet", "unigram", "bigram", "title")   # merge priority, MetaCLIP's order
PRIORITY = {s: i for i, s in enumerate(SOURCES)}
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")

_MARKUP_CHARS = re.compile(r"[\[\]{}|<>=_]")
_DISAMBIGUATION = re.compile(r"\s+\([^()]*\)$")
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")   # WordNet adjective position markers: "galore(ip)"
MAX_ENTRY_CHARS = 100


# ---------------------------------------------------------------------------------------------------
# Pure functions

def page_reject_reason(page: wikitext.WikiPage) -> str | None:
    if page.ns != 0:
        return wikitext.NOT_ARTICLE
    if page.redirect:
        return wikitext.REDIRECT
    return None


def bigram_pmi(count_ab: int, count_a: int, count_b: int, total: int) -> float:
    """log2(p(ab) / (p(a) p(b))) with counts from one corpus of `total` tokens (NLTK's pmi)."""
    return math.log2(count_ab) + math.log2(total) - math.log2(count_a) - math.log2(count_b)


def entry_ok(entry: str) -> bool:
    """A normalized entry usable as a query: no markup characters, not too long, holds a real word."""
    return (0 < len(entry) <= MAX_ENTRY_CHARS and not _MARKUP_CHARS.search(entry)
            and any(is_query_token(t) for t in entry.split(" ")))


def title_to_entry(title: str) -> str | None:
    """'Mercury (planet)' -> 'Mercury'; None for a title that cannot be a query."""
    entry = normalize_entry(_DISAMBIGUATION.sub("", title.replace("_", " ")))
    return entry if entry_ok(entry) else None


def wordnet_head_lemma(line: str) -> str | None:
    """Head lemma of a WordNet 3.0 `data.*` line, as NLTK names the synset; None for header lines."""
    line = line.rstrip("\r\n")
    if not line or line.startswith(" "):
        return None  # licence header lines start with two spaces
    fields = line.split(" ", 5)
    if len(fields) < 5 or not fields[0].isdigit():
        raise ValueError(f"not a WordNet data line: {line[:60]!r}")
    lemma = _ADJ_MARKER.sub("", fields[4]).lower().replace("_", " ")
    entry = normalize_entry(lemma)
    return entry if entry_ok(entry) else None


def parse_pageview_line(line: str) -> tuple[str, int] | None:
    """('Title with spaces', views) from a Wikimedia pageviews line ('en Title 12 0') or 'Title\\tviews'.

    None for lines of other wikis. Raises ValueError for a line in neither format.
    """
    if "\t" in line:
        title, views = line.rstrip("\n").rsplit("\t", 1)
    else:
        parts = line.split(" ")
        if len(parts) != 4:
            raise ValueError(f"not a pageviews line: {line[:60]!r}")
        domain, title, views, _ = parts
        if domain not in ("en", "en.m"):
            return None
    if not views.strip().isdigit():
        raise ValueError(f"not a view count: {views!r}")
    return title.replace("_", " "), int(views)


def merge_candidates(query: str, candidates: Iterable[tuple]) -> tuple:
    """One row per query from its (source, count, pmi, rank_value) candidates: primary source first."""
    cands = sorted(candidates, key=lambda c: PRIORITY[c[0]])
    sources = ",".join(dict.fromkeys(c[0] for c in cands))
    by_source = {c[0]: c for c in cands}
    count = next((by_source[s][1] for s in ("unigram", "bigram", "title")
                  if s in by_source and by_source[s][1] is not None), None)
    pmi = by_source["bigram"][2] if "bigram" in by_source else None
    return query, sources, count, pmi, cands[0][3]


def rank_key(row: tuple) -> tuple:
    """Total order of merged rows: source priority, then larger rank value, then code points."""
    query, sources, _, _, rank_value = row
    return PRIORITY[sources.split(",", 1)[0]], -rank_value, query


TITLE_CANDIDATE = ("title", None, None, 0)       # (source, count, pmi, rank value), as merge_candidates reads it
WORDNET_CANDIDATE = ("wordnet", None, None, 0)


def bucket_candidates(pairs: Iterable[tuple[str, tuple]], buckets: int) -> Iterator[tuple[int, list]]:
    """(query, candidate) pairs -> (bucket_of(query), [pairs]) lists, so that the candidates of one query
    from every source meet in one bucket."""
    by_bucket: dict[int, list] = {}
    for pair in pairs:
        by_bucket.setdefault(bucket_of(pair[0], buckets), []).append(pair)
    return iter(sorted(by_bucket.items()))


def merge_bucket(candidate_lists: Iterable[list], n: int) -> list[tuple]:
    """The [(query, candidate)] lists of one bucket -> its first n merged rows, sorted by `rank_key`."""
    by_query: dict[str, dict] = {}
    for pairs in candidate_lists:
        for query, candidate in pairs:
            by_query.setdefault(query, {})[candidate] = None   # a title read twice is one candidate
    return heapq.nsmallest(n, (merge_candidates(q, c) for q, c in by_query.items()), key=rank_key)


def format_rows(rows: list[tuple]) -> str:
    lines = ["\t".join(QUERY_LIST_HEADER) + "\n"]
    for qid, (query, sources, count, pmi, _) in enumerate(rows):
        lines.append(f"{qid}\t{query}\t{sources}\t{'' if count is None else count}\t"
                     f"{'' if pmi is None else f'{pmi:.4f}'}\n")
    return "".join(lines)


def source_stats(rows: list[tuple]) -> dict:
    primary = Counter(r[1].split(",", 1)[0] for r in rows)
    anywhere = Counter(s for r in rows for s in r[1].split(","))
    return {"entries": len(rows),
            "by_primary_source": {s: primary.get(s, 0) for s in SOURCES},
            "by_any_source": {s: anywhere.get(s, 0) for s in SOURCES},
            "top_unigrams": [r[0] for r in rows if r[1].startswith("unigram")][:20],
            "top_bigrams": [r[0] for r in rows if r[1].split(",")[0] == "bigram"][:20]}


# ---------------------------------------------------------------------------------------------------
# Beam
#
# Beam's cost is per element and per transform (FnApiRunner: a few microseconds per element and step,
# and tens of milliseconds per transform to build and fuse the pipeline), so the stage moves few, fat
# elements: per split one list of titles and one count dict pair per hash bucket; per bucket one list of
# candidates. Queries are merged by the bucket of the query, so no element is ever one word or one title.

class CountSplitWordsFn(beam.DoFn):
    """Read one split's pages, count its tokens and bigrams, emit bucketed count dicts and titles.

    Main output: (bucket, ({word: n}, {(a, b): n})); "tokens": the split's word tokens (one int);
    "titles": the split's article titles (one list). Page counters are added once per split.
    """

    def __init__(self, buckets: int, max_keys: int):
        self.buckets, self.max_keys = buckets, max_keys

    def setup(self):
        log.info("stage 1 counting core: %s", wikicore.BACKEND)
        self.read = beamrun.counter(NS, "read")
        self.kept = beamrun.counter(NS, "kept")
        self.rejected = {r: beamrun.counter(NS, f"rejected_{r}") for r in (
            wikitext.NOT_ARTICLE, wikitext.REDIRECT, wikitext.MALFORMED_PAGE, wikitext.EMPTY_TEXT,
            wikitext.TRUNCATED_STREAM, wikitext.CORRUPT_STREAM)}

    def process(self, split: wikidump.WikiSplit):
        counter = wikicore.new_split_counter()
        titles: list[str] = []
        rejected: Counter = Counter()
        tokens = 0
        try:
            for block in wikitext.iter_page_blocks(wikidump.read_split_text(split)):
                try:
                    page = wikitext.parse_page_block(block)
                except ValueError as e:
                    log.warning("%s@%d: %s", split.path, split.start, e)
                    rejected[wikitext.MALFORMED_PAGE] += 1
                    continue
                reason = page_reject_reason(page)
                if reason is None and counter.add_page(page.text) == 0:
                    reason = wikitext.EMPTY_TEXT
                if reason:
                    rejected[reason] += 1
                    continue
                titles.append(page.title)
                if counter.distinct_bigrams > self.max_keys:  # bound a worker's memory on a huge unsplit file
                    for part in bucket_parts(counter, self.buckets):
                        tokens += sum(part[1][0].values())
                        yield part
        except wikitext.TruncatedInput as e:
            log.warning("%s@%d: %s; pages before it are kept", split.path, split.start, e)
            rejected[e.reason] += 1
        for part in bucket_parts(counter, self.buckets):
            tokens += sum(part[1][0].values())
            yield part
        self.read.inc(len(titles) + sum(rejected.values()))
        self.kept.inc(len(titles))
        for reason, n in rejected.items():
            self.rejected[reason].inc(n)
        yield TaggedOutput("tokens", tokens)
        if titles:
            yield TaggedOutput("titles", titles)


def bucket_parts(counter, buckets: int) -> list[tuple[int, tuple[dict, dict]]]:
    """A SplitCounter's counts as (bucket, ({word: n}, {(a, b): n})) parts, sorted by bucket; clears it."""
    by_bucket: dict[int, list[dict]] = {}
    for kind, b, part in counter.parts(buckets, bucket_of):
        by_bucket.setdefault(b, [{}, {}])[kind == "bi"] = part
    counter.clear()
    return [(b, (unigrams, bigrams)) for b, (unigrams, bigrams) in sorted(by_bucket.items())]


class MergeBucketCountsFn(beam.CombineFn):
    """Sum the per-split ({word: n}, {(a, b): n}) parts of one hash bucket."""

    def create_accumulator(self):
        return {}, {}

    def add_input(self, acc, part):
        return add_counts(acc[0], part[0]), add_counts(acc[1], part[1])

    def merge_accumulators(self, accs):
        accs = sorted(accs, key=lambda acc: len(acc[1]), reverse=True)  # fold the small ones into the largest
        acc = accs[0]
        for other in accs[1:]:
            acc = self.add_input(acc, other)
        return acc

    def extract_output(self, acc):
        return acc


class CountWikipediaWords(beam.PTransform):
    """splits -> {bucket_counts: (bucket, ({word: n}, {(a, b): n})), total: word tokens, titles: [str]}.

    Counts stay in per-bucket dicts all the way: a bucket is one element, so Beam's per-element cost is
    paid a few times per bucket instead of once per distinct word or bigram. A bigram lives in the
    bucket of its first word, which is also where that word's unigram count is, so one shuffle brings
    together what the first PMI join needs (a word's and its bigrams' counts). The token total travels
    apart, as one int per split, so that it is ready as a side input when the merged buckets are.
    Titles come as one list per split. `beam.Create` already spreads several splits over workers (it
    reshuffles when it has more than one element), so there is no Reshuffle of our own.
    """

    def __init__(self, buckets: int, max_keys: int):
        super().__init__()
        self.buckets, self.max_keys = buckets, max_keys

    def expand(self, splits):
        parts = splits | "CountSplitWords" >> beam.ParDo(CountSplitWordsFn(self.buckets, self.max_keys)).with_outputs(
            "tokens", "titles", main="parts")
        return {"bucket_counts": parts.parts | "MergeBucketParts" >> beam.CombinePerKey(MergeBucketCountsFn()),
                # every split emits its total, so the sum exists without CombineGlobally's default-value steps
                "total": parts.tokens | "TotalTokens" >> beam.CombineGlobally(sum).without_defaults(),
                "titles": parts.titles}


# Rounding slack of the PMI bound below: bigram_pmi sums four float logs, so its value can exceed the
# bound's two-log difference by a few ulps (~1e-14 at these magnitudes); 1e-9 keeps the pruning exact.
PMI_BOUND_SLACK = 1e-9


def max_pmi_with_first(count_a: int, total: int) -> float:
    """An upper bound of the PMI of any bigram (a, b): c(ab) <= c(b) gives pmi <= log2(total / c(a))."""
    return math.log2(total) - math.log2(count_a)


def attach_first_counts(bucket_counts: tuple, buckets: int, min_count: int, total: int,
                        min_pmi: float) -> Iterator[tuple[int, dict]]:
    """Bucket of a's: ({a: n_a}, {(a, b): n_ab}) -> per bucket of b: {(a, b): (n_ab, n_a)}.

    A bigram whose first word is too frequent for any bigram to reach min_pmi is dropped here
    (`max_pmi_with_first`): with MetaCLIP's PMI >= 30 that is almost all of them, so the second join
    moves a small fraction of the bigrams instead of every one.
    """
    _, (unigrams, bigrams) = bucket_counts
    floor = min_pmi - PMI_BOUND_SLACK
    # the bound depends on c(a) alone: decide once per word, not once per bigram
    firsts = {a for a, n_a in unigrams.items() if max_pmi_with_first(n_a, total) >= floor}
    out: dict[int, dict] = {}
    b_bucket: dict[str, int] = {}   # bucket_of once per distinct second word, not once per bigram
    for (a, b), n_ab in bigrams.items():
        if n_ab < min_count or a not in firsts:
            continue
        if (bucket := b_bucket.get(b)) is None:
            bucket = b_bucket[b] = bucket_of(b, buckets)
        out.setdefault(bucket, {})[(a, b)] = (n_ab, unigrams[a])
    yield from sorted(out.items())


def route_to_second_word(bucket_counts: tuple, buckets: int, min_count: int, total: int,
                         min_pmi: float) -> Iterator[tuple[int, tuple[str, dict]]]:
    """Bucket of a's -> its unigrams to itself and its bigram parts to the buckets of their b's."""
    yield bucket_counts[0], ("unigrams", bucket_counts[1][0])
    for bucket, part in attach_first_counts(bucket_counts, buckets, min_count, total, min_pmi):
        yield bucket, ("bigrams", part)


def score_bucket(joined: tuple, total: int, min_pmi: float) -> Iterator[tuple[str, tuple]]:
    """Bucket of b's: {b: n_b} + parts {(a, b): (n_ab, n_a)} -> bigram candidates with PMI >= min_pmi."""
    _, tagged = joined
    unigrams, parts = {}, []
    for tag, counts in tagged:
        if tag == "unigrams":
            unigrams = counts
        else:
            parts.append(counts)
    for part in parts:
        for (a, b), (n_ab, n_a) in part.items():
            pmi = bigram_pmi(n_ab, n_a, unigrams[b], total)
            if pmi >= min_pmi:
                yield normalize_entry(f"{a} {b}"), ("bigram", n_ab, pmi, pmi)


class ScoreBigrams(beam.PTransform):
    """(bucket_counts, total) -> bigram candidates with PMI >= min_pmi, as (bucket, [(query, candidate)]).

    PMI needs the counts of both words. Two bucket-level joins attach them (first word: same bucket;
    second word: re-bucketed, one GroupByKey of the unigram dicts and the bigram parts), so no worker holds
    the whole vocabulary as a side input. The first join already drops the bigrams that cannot reach
    min_pmi whatever their second word.
    """

    def __init__(self, buckets: int, min_count: int, min_pmi: float):
        super().__init__()
        self.buckets, self.min_count, self.min_pmi = buckets, min_count, min_pmi

    def expand(self, pcolls):
        bucket_counts, total = pcolls
        buckets, min_pmi = self.buckets, self.min_pmi
        return (bucket_counts
                | "RouteToSecondWord" >> beam.FlatMap(route_to_second_word, buckets, self.min_count,
                                                      total=beam.pvalue.AsSingleton(total), min_pmi=min_pmi)
                | "JoinSecondWord" >> beam.GroupByKey()
                | "KeepHighPmi" >> beam.FlatMap(lambda joined, total: bucket_candidates(
                    score_bucket(joined, total, min_pmi), buckets), total=beam.pvalue.AsSingleton(total)))


def unigram_candidates(bucket_counts: tuple, min_count: int) -> Iterator[tuple[int, list]]:
    """Bucket of words -> its words with count >= min_count, as one candidate list of the same bucket
    (a word's count bucket is bucket_of(word), the bucket its query merges in)."""
    bucket, (unigrams, _) = bucket_counts
    frequent = [(w, ("unigram", n, None, n)) for w, n in unigrams.items() if n >= min_count]
    if frequent:
        yield bucket, frequent


def title_candidates(titles: list[str], buckets: int) -> Iterator[tuple[int, list]]:
    """A split's article titles -> (bucket, [(entry, title candidate)]) lists."""
    return bucket_candidates(((e, TITLE_CANDIDATE) for t in titles if (e := title_to_entry(t))), buckets)


class SelectTitles(beam.PTransform):
    """Lists of article titles -> title candidate lists; with page views, only titles viewed >= min_views times."""

    def __init__(self, pageviews: tuple[str, ...], min_views: int, buckets: int):
        super().__init__()
        self.pageviews, self.min_views, self.buckets = tuple(pageviews), min_views, buckets

    def expand(self, title_lists):
        buckets = self.buckets
        if not self.pageviews:   # duplicates merge with the other candidates of their query
            return title_lists | "TitleCandidates" >> beam.FlatMap(title_candidates, buckets)
        min_views = self.min_views
        entries = title_lists | "TitleToEntry" >> beam.FlatMap(lambda ts: [e for t in ts if (e := title_to_entry(t))])
        views = (entries.pipeline
                 | "ListPageviewFiles" >> beam.Create(self.pageviews)
                 | "ReadPageviews" >> beam.io.ReadAllFromText()
                 | "ParsePageviews" >> beam.FlatMap(_parse_pageviews_counted)
                 | "ViewsToEntry" >> beam.FlatMap(lambda tv: [(e, tv[1])] if (e := title_to_entry(tv[0])) else [])
                 | "SumViews" >> beam.CombinePerKey(sum))
        keyed = entries | "KeyTitles" >> beam.Map(lambda e: (e, True))

        def viewed(kv):
            entry, groups = kv
            total = sum(groups["views"])
            if groups["article"] and total >= min_views:
                yield bucket_of(entry, buckets), [(entry, ("title", total, None, total))]

        return {"article": keyed, "views": views} | "JoinViews" >> beam.CoGroupByKey() | "KeepViewed" >> beam.FlatMap(viewed)


def _parse_pageviews_counted(line: str):
    beamrun.counter(NS, "pageview_lines").inc()
    try:
        parsed = parse_pageview_line(line)
    except ValueError:
        beamrun.counter(NS, "pageview_lines_bad").inc()
        return
    if parsed:
        yield parsed


def wordnet_candidates(path: str, buckets: int) -> Iterator[tuple[int, list]]:
    """One WordNet data file -> (bucket, [(lemma, wordnet candidate)]) lists.

    The file is read whole (data.noun, the largest, is 15 MB): one element per file instead of one per
    line. Lines split as Beam's ReadFromText splits them ('\\n' or '\\r\\n'), decoded as strict UTF-8.
    """
    with files.open_file(path, "rb") as f:
        lines = f.read().decode("utf-8").split("\n")
    lemmas, bad = [], 0
    for line in lines:
        try:
            lemma = wordnet_head_lemma(line)
        except ValueError:
            bad += 1
            continue
        if lemma:
            lemmas.append((lemma, WORDNET_CANDIDATE))
    if bad:
        beamrun.counter(NS, "wordnet_lines_bad").inc(bad)
    return bucket_candidates(lemmas, buckets)


def write_query_list(rows: list[tuple], out_dir: str) -> None:
    """Write queries.tsv and source_stats.json, each atomically (readers never see half a list)."""
    for name, payload in (("queries.tsv", format_rows(rows)),
                          ("source_stats.json", json.dumps(source_stats(rows), indent=2) + "\n")):
        with files.atomic_write(f"{out_dir.rstrip('/')}/{name}", "wb") as f:
            f.write(payload.encode("utf-8"))


class KeepTopRowsFn(beam.CombineFn):
    """Lists of merged rows -> the first n of all of them in `rank_key` order.

    Rows are collected unsorted and sorted once at the end (and whenever more than 2n are held, to bound
    memory): Timsort with one `rank_key` call per row, instead of a Python-level merge per list.
    """

    def __init__(self, n: int):
        self.n = n

    def create_accumulator(self):
        return []

    def add_input(self, acc, rows):
        acc.extend(rows)
        return self._first_n(acc) if len(acc) > 2 * self.n else acc

    def merge_accumulators(self, accs):
        accs = iter(accs)
        acc = next(accs)
        for other in accs:
            acc = self.add_input(acc, other)
        return acc

    def extract_output(self, acc):
        return self._first_n(acc)

    def _first_n(self, rows):
        rows.sort(key=rank_key)
        del rows[self.n:]
        return rows


@dataclasses.dataclass(frozen=True)
class QueryListSettings:
    """The stage's thresholds and sources, parsed once by `run` (input files already listed and checked)."""
    out: str
    min_unigram_count: int = MIN_UNIGRAM_COUNT
    min_bigram_count: int = MIN_BIGRAM_COUNT
    min_pmi: float = MIN_PMI
    min_pageviews: int = MIN_PAGEVIEWS
    max_entries: int = MAX_ENTRIES
    count_buckets: int = COUNT_BUCKETS
    max_keys_per_worker: int = MAX_KEYS_PER_WORKER
    pageviews: tuple[str, ...] = ()       # page-view count files
    wordnet_files: tuple[str, ...] = ()   # WordNet's data.* files


class BuildQueryList(beam.PTransform):
    """The whole stage: splits (+ WordNet files, page views) -> the merged, ranked query list on disk.

    Every source gives (bucket of the query, [(query, candidate)]) lists; one GroupByKey brings each
    query's candidates together, each bucket keeps its first max_entries rows, and one global combine
    keeps the first max_entries of those.
    """

    def __init__(self, settings: QueryListSettings):
        super().__init__()
        self.settings = settings

    def expand(self, splits):
        a = self.settings
        counts = splits | "CountWikipediaWords" >> CountWikipediaWords(a.count_buckets, a.max_keys_per_worker)
        unigrams = counts["bucket_counts"] | "KeepFrequentWords" >> beam.FlatMap(
            unigram_candidates, a.min_unigram_count)
        bigrams = ((counts["bucket_counts"], counts["total"])
                   | "ScoreBigrams" >> ScoreBigrams(a.count_buckets, a.min_bigram_count, a.min_pmi))
        titles = counts["titles"] | "SelectTitles" >> SelectTitles(a.pageviews, a.min_pageviews, a.count_buckets)
        candidates = [unigrams, bigrams, titles]
        if a.wordnet_files:
            candidates.append(splits.pipeline
                              | "ListWordNetFiles" >> beam.Create(a.wordnet_files)
                              | "WordNetCandidates" >> beam.FlatMap(wordnet_candidates, a.count_buckets))
        # The token total is one element in every run: an empty candidate list keyed on it makes sure the
        # list is written even when no source has a candidate. (CombineGlobally's own default would pass
        # the whole list through a side input, which Beam's state cache then weighs object by object.)
        candidates.append(counts["total"] | "NoCandidate" >> beam.Map(lambda _: (0, [])))
        out_dir, n = a.out, a.max_entries
        return (candidates
                | "AllCandidates" >> beam.Flatten()
                | "GroupByBucket" >> beam.GroupByKey()
                | "MergeSources" >> beam.Map(lambda kv: merge_bucket(kv[1], n))
                | "TopEntries" >> beam.CombineGlobally(KeepTopRowsFn(n)).without_defaults()
                | "WriteQueryList" >> beam.Map(write_query_list, out_dir))


# ---------------------------------------------------------------------------------------------------
# Entry point

def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m pipeline.queries", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dump", action="append", required=True,
                   help="MediaWiki export file, folder, glob or brace pattern (.xml, .xml.bz2, multistream); repeatable")
    p.add_argument("--out", required=True, help="output folder, e.g. queries/enwiki")
    p.add_argument("--wordnet", help="folder with WordNet 3.0 data.noun/verb/adj/adv (omit: no WordNet source)")
    p.add_argument("--pageviews", help="page-view count files (glob): 'en Title views bytes' or 'Title<TAB>views'")
    p.add_argument("--min-unigram-count", type=int, default=MIN_UNIGRAM_COUNT)
    p.add_argument("--min-pmi", type=float, default=MIN_PMI, help="bigram PMI threshold (log2)")
    p.add_argument("--min-bigram-count", type=int, default=MIN_BIGRAM_COUNT)
    p.add_argument("--min-pageviews", type=int, default=MIN_PAGEVIEWS)
    p.add_argument("--max-entries", type=int, default=MAX_ENTRIES)
    p.add_argument("--split-mb", type=int, default=wikidump.DEFAULT_SPLIT_BYTES >> 20,
                   help="compressed MB of bz2 streams per work item for multistream dumps")
    p.add_argument("--count-buckets", type=int, default=0,
                   help="hash buckets the word counts are merged in (default: by input size, >= 16; see count_buckets_for)")
    p.add_argument("--max-keys-per-worker", type=int, default=MAX_KEYS_PER_WORKER,
                   help="flush a split's partial counts beyond this many distinct bigrams (memory bound)")
    p.add_argument("--no-checksums", action="store_true", help="skip sha256 of inputs in the manifest")
    args, beam_args = p.parse_known_args(argv)
    for name in ("min_unigram_count", "min_bigram_count", "max_entries", "split_mb"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.count_buckets < 0:
        p.error("--count-buckets must be >= 1 (or 0: by input size)")
    return args, beam_args


# A worker's largest state is one count bucket's merged bigram dict, so the bucket count grows with the input:
# distinct bigrams grow more slowly than the text (~tokens^0.81, BENCHMARKS.md "Stage 1 at scale"), so a bucket
# per 256 MB of XML keeps a bucket under ~1M distinct bigrams (~170 MB) up to the full English dump and beyond.
MIN_COUNT_BUCKETS = 16
XML_BYTES_PER_BUCKET = 256 << 20
BZ2_XML_RATIO = 3.6   # XML bytes per bz2 byte of Wikipedia text: 194.78 MB / 54.24 MB (BENCHMARKS.md, "Stage 1")


def count_buckets_for(dump_sizes: list[tuple[str, int]]) -> int:
    """Buckets for dumps of these (path, bytes): one per XML_BYTES_PER_BUCKET of (estimated) XML, >= 16."""
    xml_bytes = sum(size * (BZ2_XML_RATIO if path.endswith(".bz2") else 1) for path, size in dump_sizes)
    return max(MIN_COUNT_BUCKETS, math.ceil(xml_bytes / XML_BYTES_PER_BUCKET))


def _check_wordnet(folder: str) -> list[str]:
    paths = [f"{folder.rstrip('/')}/{f}" for f in WORDNET_FILES]
    missing = [p for p in paths if not files.exists(p)]
    if missing:
        raise wikidump.InputError(f"WordNet folder {folder} lacks {', '.join(missing)}")
    return paths


def run(argv: list[str] | None = None) -> dict:
    """Run the stage; returns the manifest. Bad inputs or settings raise SystemExit with one line."""
    args, beam_args = parse_args(argv)
    started = time.time()
    try:
        dumps = files.expand(args.dump, wikidump.DUMP_SUFFIXES)
        for path in dumps:
            wikidump.check_dump(path)
        splits = [s for path in dumps for s in wikidump.plan_splits(path, args.split_mb << 20)]
        if not args.count_buckets:
            args.count_buckets = count_buckets_for([(path, files.size(path)) for path in dumps])
        wordnet_files = _check_wordnet(args.wordnet) if args.wordnet else []
        pageview_files = files.expand(args.pageviews) if args.pageviews else []
    except (wikidump.InputError, files.NoFilesError) as e:
        raise SystemExit(f"queries: {e}") from None
    files.makedirs(args.out)
    settings = QueryListSettings(
        args.out, args.min_unigram_count, args.min_bigram_count, args.min_pmi, args.min_pageviews, args.max_entries,
        args.count_buckets, args.max_keys_per_worker, tuple(pageview_files), tuple(wordnet_files))

    with beam.Pipeline(options=beamrun.pipeline_options(beam_args)) as p:
        _ = p | "ListSplits" >> beam.Create(splits) | "BuildQueryList" >> BuildQueryList(settings)
    result = p.result
    counters = beamrun.read_counters(result, NS)

    with files.open_file(f"{args.out.rstrip('/')}/source_stats.json", "rb") as f:
        stats = json.loads(f.read())
    page_counters = beamio.manifest_counters(counters)
    settings = {k: v for k, v in vars(args).items() if k not in ("dump",)}
    settings["beam_args"] = beam_args
    inputs = [manifest.file_info(x, checksum=not args.no_checksums) for x in dumps + wordnet_files + pageview_files]
    return manifest.write_manifest(
        args.out, stage="queries", settings=settings, inputs=inputs, counters=page_counters,
        wall_time_s=time.time() - started,
        extra={"splits": len(splits), "sources": stats,
               "other_counters": {k: v for k, v in counters.items()
                                  if k not in ("read", "kept") and not k.startswith("rejected_")}})


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    m = run(argv)
    s = m["sources"]
    c = m["counters"]
    print(f"queries: {s['entries']:,} entries -> {m['settings']['out']}/queries.tsv "
          f"({', '.join(f'{k} {v:,}' for k, v in s['by_primary_source'].items())})")
    print(f"pages: read {c['read']:,} = kept {c['kept']:,} + rejected "
          f"{sum(c['rejected'].values()):,} {dict(c['rejected'])}; {m['wall_time_s']:.1f}s")
    print(f"top unigrams: {', '.join(s['top_unigrams'][:12])}")
    if s["top_bigrams"]:
        print(f"top bigrams:  {', '.join(s['top_bigrams'][:8])}")


if __name__ == "__main__":
    main(sys.argv[1:])
