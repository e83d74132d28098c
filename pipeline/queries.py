"""Stage 1 (`make queries`): the query list from English Wikipedia word counts, as CLIP/MetaCLIP built it.

In:  MediaWiki export dump(s) (`--dump`, globs, local or fsspec; multistream bz2 split by stream groups),
     WordNet 3.0 database files (`--wordnet DIR`), optional page-view counts (`--pageviews GLOB`).
Out: `<out>/queries.tsv` (`query_id, query, source, count, pmi`), `<out>/source_stats.json`,
     `<out>/manifest.json` (settings, inputs with checksums, pages read/kept/rejected by reason).

The recipe is MetaCLIP's `build_metadata.py` (Xu et al. 2023, "Demystifying CLIP Data"):
- unigrams: whole tokens (`pipeline.text.tokenize`, the matcher's own semantics) with count >= 100;
- bigrams: pointwise mutual information log2(c(ab) * N / (c(a) * c(b))) >= 30, N = counted word tokens
  (NLTK's `BigramAssocMeasures.pmi`, which MetaCLIP used: log base 2, no count floor of its own);
- article titles: all article titles, or those with >= 70 page views in the given page-view files;
- WordNet synsets: the head lemma of every synset, lower-cased with '_' -> ' ' (NLTK's synset name).
Priority when merging into at most `--max-entries` (500,000): wordnet, unigram, bigram, title (MetaCLIP's
order); within a source by count (unigram), PMI (bigram), page views (title), then the query's code
points, so the list is a total order and the file is byte-identical on any runner and worker count.

Counting is pre-aggregated: each split (a file, or ~64 MB of bz2 streams) counts its pages into one
`wikicore` SplitCounter (a C extension: markup stripping, tokenizing and counting in one call per page,
with identical results to the Python reference in `wikitext`/`text`, see pipeline/wikicore.py) and emits
one ({word: n}, {(a, b): n}) pair per hash bucket, so Beam handles a few dicts per split instead of one
element per word (Beam's per-element cost would otherwise dominate, see DESIGN.md). The bigram dicts
cross one shuffle; the first PMI join then drops every bigram whose first word is too frequent to reach
the PMI threshold (exact: pmi(a, b) <= log2(N / c(a))). Measured: BENCHMARKS.md, "Stage 1".

Run: python -m pipeline.queries --dump 'dumps/enwiki-*-multistream.xml.bz2' --wordnet data/wordnet-3.0 \
        --out queries/enwiki [--runner=... any Beam options]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import time
from collections import Counter
from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import TaggedOutput

from pipeline import beamrun, manifest, wikicore, wikidump, wikitext
from pipeline.beamio import add_counts, bucket_of  # bucket_of: stable across processes, unlike hash()
from pipeline.records import QUERY_LIST_HEADER
from pipeline.text import is_query_token, normalize_entry

log = logging.getLogger(__name__)
NS = "queries"  # Beam counter namespace

# MetaCLIP defaults (build_metadata.py)
MIN_UNIGRAM_COUNT = 100
MIN_PMI = 30.0
MIN_BIGRAM_COUNT = 1          # MetaCLIP applies no count floor beyond its n-gram input file
MIN_PAGEVIEWS = 70
MAX_ENTRIES = 500_000         # CLIP paper: "a list of 500,000 queries"

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

class CountSplitWordsFn(beam.DoFn):
    """Read one split's pages, count its tokens and bigrams, emit bucketed count dicts and titles."""

    def __init__(self, buckets: int, max_keys: int):
        self.buckets, self.max_keys = buckets, max_keys

    def setup(self):
        log.info("stage 1 counting core: %s", wikicore.BACKEND)
        self.read = beamrun.counter(NS, "read")
        self.kept = beamrun.counter(NS, "kept")
        self.rejected = {r: beamrun.counter(NS, f"rejected.{r}") for r in (
            wikitext.NOT_ARTICLE, wikitext.REDIRECT, wikitext.MALFORMED_PAGE, wikitext.EMPTY_TEXT,
            wikitext.TRUNCATED_STREAM, wikitext.CORRUPT_STREAM)}

    def _reject(self, reason: str):
        self.read.inc()
        self.rejected[reason].inc()

    def process(self, split: wikidump.WikiSplit):
        counter = wikicore.new_split_counter()
        try:
            for block in wikitext.iter_page_blocks(wikidump.read_split_text(split)):
                try:
                    page = wikicore.parse_page_block(block)
                except ValueError as e:
                    log.warning("%s@%d: %s", split.path, split.start, e)
                    self._reject(wikitext.MALFORMED_PAGE)
                    continue
                reason = page_reject_reason(page)
                if reason is None and counter.add_page(page.text) == 0:
                    reason = wikitext.EMPTY_TEXT
                if reason:
                    self._reject(reason)
                    continue
                self.read.inc()
                self.kept.inc()
                yield TaggedOutput("titles", page.title)
                if counter.distinct_bigrams > self.max_keys:  # bound a worker's memory on a huge unsplit file
                    yield from self._emit(counter)
        except wikitext.TruncatedInput as e:
            log.warning("%s@%d: %s; pages before it are kept", split.path, split.start, e)
            self._reject(e.reason)
        yield from self._emit(counter)

    def _emit(self, counter):
        by_bucket: dict[int, list[dict]] = {}
        for kind, b, part in counter.parts(self.buckets, bucket_of):
            by_bucket.setdefault(b, [{}, {}])[kind == "bi"] = part
        counter.clear()
        for b, (unigrams, bigrams) in sorted(by_bucket.items()):
            yield TaggedOutput("tokens", sum(unigrams.values()))
            yield b, (unigrams, bigrams)


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
    """splits -> {bucket_counts: (bucket, ({word: n}, {(a, b): n})), total: word tokens, titles: str}.

    Counts stay in per-bucket dicts all the way: a bucket is one element, so Beam's per-element cost is
    paid a few times per bucket instead of once per distinct word or bigram. A bigram lives in the
    bucket of its first word, which is also where that word's unigram count is, so one shuffle brings
    together what the first PMI join needs (a word's and its bigrams' counts). The token total travels
    apart, as one int per split, so that it is ready as a side input when the merged buckets are.
    """

    def __init__(self, buckets: int, max_keys: int):
        super().__init__()
        self.buckets, self.max_keys = buckets, max_keys

    def expand(self, splits):
        parts = (splits
                 | "SpreadSplits" >> beam.Reshuffle()
                 | "CountSplitWords" >> beam.ParDo(CountSplitWordsFn(self.buckets, self.max_keys))
                 .with_outputs("tokens", "titles", main="parts"))
        return {"bucket_counts": parts.parts | "MergeBucketParts" >> beam.CombinePerKey(MergeBucketCountsFn()),
                "total": parts.tokens | "TotalTokens" >> beam.CombineGlobally(sum),
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
    out: dict[int, dict] = {}
    b_bucket: dict[str, int] = {}   # blake2b once per distinct second word, not once per bigram
    for (a, b), n_ab in bigrams.items():
        n_a = unigrams[a]
        if n_ab < min_count or max_pmi_with_first(n_a, total) < min_pmi - PMI_BOUND_SLACK:
            continue
        if (bucket := b_bucket.get(b)) is None:
            bucket = b_bucket[b] = bucket_of(b, buckets)
        out.setdefault(bucket, {})[(a, b)] = (n_ab, n_a)
    yield from sorted(out.items())


def score_bucket(joined: tuple, total: int, min_pmi: float) -> Iterator[tuple[str, tuple]]:
    """Bucket of b's: {(a, b): (n_ab, n_a)} + {b: n_b} -> bigram candidates with PMI >= min_pmi."""
    _, groups = joined
    unigrams = groups["unigrams"][0] if groups["unigrams"] else {}
    for part in groups["bigrams"]:
        for (a, b), (n_ab, n_a) in part.items():
            pmi = bigram_pmi(n_ab, n_a, unigrams[b], total)
            if pmi >= min_pmi:
                yield normalize_entry(f"{a} {b}"), ("bigram", n_ab, pmi, pmi)


class ScoreBigrams(beam.PTransform):
    """(bucket_counts, total) -> bigram candidates with PMI >= min_pmi.

    PMI needs the counts of both words. Two bucket-level joins attach them (first word: same bucket;
    second word: re-bucketed), so no worker holds the whole vocabulary as a side input. The first join
    already drops the bigrams that cannot reach min_pmi whatever their second word.
    """

    def __init__(self, buckets: int, min_count: int, min_pmi: float):
        super().__init__()
        self.buckets, self.min_count, self.min_pmi = buckets, min_count, min_pmi

    def expand(self, pcolls):
        bucket_counts, total = pcolls
        unigram_buckets = bucket_counts | "UnigramsOfBucket" >> beam.MapTuple(lambda b, counts: (b, counts[0]))
        with_first = bucket_counts | "AttachFirstCounts" >> beam.FlatMap(
            attach_first_counts, self.buckets, self.min_count, total=beam.pvalue.AsSingleton(total),
            min_pmi=self.min_pmi)
        return ({"unigrams": unigram_buckets, "bigrams": with_first}
                | "JoinSecondWord" >> beam.CoGroupByKey()
                | "KeepHighPmi" >> beam.FlatMap(score_bucket, total=beam.pvalue.AsSingleton(total),
                                                min_pmi=self.min_pmi))


class SelectTitles(beam.PTransform):
    """Article titles -> title candidates; with page views, only titles viewed >= min_views times."""

    def __init__(self, pageviews: str | None, min_views: int):
        super().__init__()
        self.pageviews, self.min_views = pageviews, min_views

    def expand(self, titles):
        entries = titles | "TitleToEntry" >> beam.FlatMap(lambda t: [e] if (e := title_to_entry(t)) else [])
        if not self.pageviews:
            return entries | "DistinctTitles" >> beam.Distinct() | "AsTitleCandidate" >> beam.Map(
                lambda e: (e, ("title", None, None, 0)))
        min_views = self.min_views
        views = (entries.pipeline
                 | "ReadPageviews" >> beam.io.ReadFromText(self.pageviews)
                 | "ParsePageviews" >> beam.FlatMap(_parse_pageviews_counted)
                 | "ViewsToEntry" >> beam.FlatMap(lambda tv: [(e, tv[1])] if (e := title_to_entry(tv[0])) else [])
                 | "SumViews" >> beam.CombinePerKey(sum))
        keyed = entries | "KeyTitles" >> beam.Map(lambda e: (e, True))

        def viewed(kv):
            entry, groups = kv
            total = sum(groups["views"])
            if groups["article"] and total >= min_views:
                yield entry, ("title", total, None, total)

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


def _wordnet_lemmas(line: str):
    try:
        lemma = wordnet_head_lemma(line)
    except ValueError:
        beamrun.counter(NS, "wordnet_lines_bad").inc()
        return
    if lemma:
        yield lemma


def write_query_list(rows: list[tuple], out_dir: str) -> None:
    """Write queries.tsv and source_stats.json through Beam's filesystems (temp file + rename)."""
    for name, payload in (("queries.tsv", format_rows(rows)),
                          ("source_stats.json", json.dumps(source_stats(rows), indent=2) + "\n")):
        final = FileSystems.join(out_dir, name)
        tmp = final + ".tmp"
        with FileSystems.create(tmp) as f:
            f.write(payload.encode("utf-8"))
        if FileSystems.exists(final):
            FileSystems.delete([final])
        FileSystems.rename([tmp], [final])


class BuildQueryList(beam.PTransform):
    """The whole stage: splits (+ WordNet files, page views) -> the merged, ranked query list on disk."""

    def __init__(self, args: argparse.Namespace):
        super().__init__()
        self.args = args

    def expand(self, splits):
        a = self.args
        counts = splits | "CountWikipediaWords" >> CountWikipediaWords(a.count_buckets, a.max_keys_per_worker)
        min_unigram = a.min_unigram_count
        unigrams = counts["bucket_counts"] | "KeepFrequentWords" >> beam.FlatMap(
            lambda kv: [(w, ("unigram", n, None, n)) for w, n in kv[1][0].items() if n >= min_unigram])
        bigrams = ((counts["bucket_counts"], counts["total"])
                   | "ScoreBigrams" >> ScoreBigrams(a.count_buckets, a.min_bigram_count, a.min_pmi))
        titles = counts["titles"] | "SelectTitles" >> SelectTitles(a.pageviews, a.min_pageviews)
        candidates = [unigrams, bigrams, titles]
        if a.wordnet:
            wordnet = (splits.pipeline
                       | "ListWordNetFiles" >> beam.Create([FileSystems.join(a.wordnet, f) for f in WORDNET_FILES])
                       | "ReadWordNet" >> beam.io.ReadAllFromText()
                       | "HeadLemmas" >> beam.FlatMap(_wordnet_lemmas)
                       | "AsWordNetCandidate" >> beam.Map(lambda e: (e, ("wordnet", None, None, 0))))
            candidates.append(wordnet)
        out_dir, n = a.out, a.max_entries
        return (candidates
                | "AllCandidates" >> beam.Flatten()
                | "GroupByQuery" >> beam.GroupByKey()
                | "MergeSources" >> beam.MapTuple(merge_candidates)
                | "TopEntries" >> beam.combiners.Top.Of(n, key=rank_key, reverse=True)
                | "WriteQueryList" >> beam.Map(write_query_list, out_dir))


# ---------------------------------------------------------------------------------------------------
# Entry point

def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m pipeline.queries", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dump", action="append", required=True,
                   help="MediaWiki export file or glob (.xml, .xml.bz2, multistream); repeatable")
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
    p.add_argument("--count-buckets", type=int, default=16, help="hash buckets the word counts are merged in")
    p.add_argument("--max-keys-per-worker", type=int, default=4_000_000,
                   help="flush a split's partial counts beyond this many distinct bigrams (memory bound)")
    p.add_argument("--no-checksums", action="store_true", help="skip sha256 of inputs in the manifest")
    args, beam_args = p.parse_known_args(argv)
    for name in ("min_unigram_count", "min_bigram_count", "max_entries", "split_mb", "count_buckets"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args, beam_args


def _check_wordnet(folder: str) -> list[str]:
    paths = [FileSystems.join(folder, f) for f in WORDNET_FILES]
    missing = [p for p in paths if not FileSystems.exists(p)]
    if missing:
        raise wikidump.InputError(f"WordNet folder {folder} lacks {', '.join(missing)}")
    return paths


def run(argv: list[str] | None = None) -> dict:
    """Run the stage; returns the manifest. Bad inputs or settings raise SystemExit with one line."""
    args, beam_args = parse_args(argv)
    started = time.time()
    try:
        dumps = wikidump.expand_inputs(args.dump)
        for path in dumps:
            wikidump.check_dump(path)
        splits = [s for path in dumps for s in wikidump.plan_splits(path, args.split_mb << 20)]
        extra_inputs = _check_wordnet(args.wordnet) if args.wordnet else []
        if args.pageviews:
            extra_inputs += wikidump.expand_inputs([args.pageviews])
    except wikidump.InputError as e:
        raise SystemExit(f"queries: {e}") from None
    if not FileSystems.exists(args.out):
        FileSystems.mkdirs(args.out)

    with beam.Pipeline(options=beamrun.pipeline_options(beam_args)) as p:
        _ = p | "ListSplits" >> beam.Create(splits) | "BuildQueryList" >> BuildQueryList(args)
    result = p.result
    counters = beamrun.read_counters(result, NS)

    with FileSystems.open(FileSystems.join(args.out, "source_stats.json")) as f:
        stats = json.loads(f.read())
    rejected = {k.split(".", 1)[1]: v for k, v in sorted(counters.items()) if k.startswith("rejected.")}
    page_counters = {"read": counters.get("read", 0), "kept": counters.get("kept", 0), "rejected": rejected}
    settings = {k: v for k, v in vars(args).items() if k not in ("dump",)}
    settings["beam_args"] = beam_args
    inputs = [manifest.file_info(x, checksum=not args.no_checksums) for x in dumps + extra_inputs]
    return manifest.write_manifest(
        args.out, stage="queries", settings=settings, inputs=inputs, counters=page_counters,
        wall_time_s=time.time() - started,
        extra={"splits": len(splits), "sources": stats,
               "other_counters": {k: v for k, v in counters.items()
                                  if k not in ("read", "kept") and not k.startswith("rejected.")}})


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
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
