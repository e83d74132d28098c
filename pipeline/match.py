"""Stage 2, `match`: candidate (image URL, text) pairs -> pairs whose text contains a query.

In:  a candidate pool (`--pool GLOB`, repeatable): parquet / TSV / CSV / JSONL with url + caption columns
     (`--url-col/--caption-col`, img2dataset's convention), or Common Crawl WAT files (`<img>` alt text);
     the query list `queries/<name>/queries.tsv` of the `queries` stage.
Out: `<out>/part-BBBBB-of-NNNNN.parquet` (`uid, url, caption, query_ids` + `--keep-cols`), one per URL bucket,
     sorted by uid; `<out>/query_counts.tsv` (`query_id, query, count`, every query, zero matches included);
     `<out>/rejected/part-BBBBB-of-NNNNN.parquet` (`reason, source, url, caption`, sorted by source);
     `<out>/manifest.json`. The files are a function of the inputs and settings alone: byte-identical on
     1 or N workers and on any runner.

Recipe (MetaCLIP, Xu et al. 2023, "Demystifying CLIP Data", `substr_matching`): per row, in this order,
the first failing check names the row's reject reason:
  1. the row parses, url and caption are present strings of valid UTF-8;
  2. normalise: HTML unescape, Unicode NFC, whitespace runs -> one space (url: stripped);
  3. cheap filters: http(s) URL with a host; caption length in chars and words within bounds;
  4. matching: every query q with `spacing(q)` a substring of `spacing(caption)` (whole tokens,
     case-sensitive; `pipeline.text`, the same functions stage 1 counted with), found with one
     Aho-Corasick pass over the spaced entries (pyahocorasick; `--matcher ahocorasick-rs` gives the same
     matches with less memory). The automaton is built once per worker in `DoFn.setup` from the query
     file's path, never pickled into bundles;
  5. language ID (default: English only, fastText lid.176, see `pipeline.lid` for the measurements behind
     the backend and `--lid-min-confidence`) only on rows that matched: LID is the costliest check and can
     change the outcome only there. A row is rejected when its top language is not allowed and at least
     that probable;
  6. exact duplicate URLs: of all surviving rows with one URL, the one with the smallest uid (then
     source) is kept, whichever worker saw it first (MetaCLIP de-duplicates its pool by URL).

Beam layout. The first design (one element per row, a GroupByKey per row on the URL, Beam's parquet writer)
ran end to end at 0.29x the rate of its own per-row function (4.8k vs 16.5k captions/s, bench_match): Beam's
per-element cost dominated. Now elements are batches:
  - pool files are cut into ranges (`pool.plan_ranges`: parquet row groups, text byte ranges; `--split-bytes`)
    so one huge file is read by many workers; a range is read in batches of BATCH_ROWS rows;
  - steps 1-5 judge a whole batch per element (LID as one fastText call per batch), and each batch's
    survivors and rejects are split by bucket (`beamio.bucket_of`, `--buckets` buckets: the URL for
    survivors, the source for rejects) into Arrow tables, which Beam moves as a few buffers;
  - one GroupByKey on the bucket (B keys, a few elements per batch, instead of one key per row) brings all
    rows with one URL together; step 6 runs inside the bucket with Arrow sorts, and the bucket is written as
    one part file sorted by uid (plus its rejected part, sorted by source). Every bucket is written, empty
    ones too, so the next stage always finds files.
Every row read ends kept or rejected with one reason; Beam counters feed the manifest (read = kept + rejected).

Run:  python -m pipeline.match --pool 'data/pool/*.parquet' --url-col URL --caption-col TEXT \\
          --queries queries/enwiki/queries.tsv --out work/matched [--runner=... other Beam options]
      (or `make match`). CC3M's headerless TSV: `--pool-format tsv --no-header --url-col 1 --caption-col 0`.
      A bucket is de-duplicated in one worker's memory: for big pools raise `--buckets` to about one per
      million matched rows.
"""

from __future__ import annotations

import argparse
import html
import itertools
import logging
import re
import sys
import time
import unicodedata
from typing import Any, Iterable

import ahocorasick
import apache_beam as beam
import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import beamio, lid, pool
from pipeline.beamrun import counter, pipeline_options, read_counters
from pipeline.manifest import write_manifest
from pipeline.records import QueryListError, load_query_list, matched_schema, uid_of
from pipeline.text import spacing

STAGE = "match"

# Reject reasons, in the order the checks run.
MALFORMED_ROW = pool.MALFORMED_ROW
MISSING_URL = "missing_url"
MISSING_CAPTION = "missing_caption"
NON_STRING_URL = "non_string_url"
NON_STRING_CAPTION = "non_string_caption"
INVALID_UTF8 = pool.INVALID_UTF8
NOT_HTTP_URL = "not_http_url"
EMPTY_CAPTION = "empty_caption"
CAPTION_TOO_SHORT = "caption_too_short"
CAPTION_TOO_LONG = "caption_too_long"
TOO_FEW_WORDS = "too_few_words"
NO_QUERY_MATCH = "no_query_match"
WRONG_LANGUAGE = "wrong_language"
DUPLICATE_URL = "duplicate_url"

MIN_CAPTION_CHARS = 5  # LAION-5B drops alt texts shorter than 5 characters
MAX_CAPTION_CHARS = 2000  # far above CLIP's 77-token context (~300 chars): only runaway texts (pages in alt) hit it
MIN_WORDS = 1
DEFAULT_LANGUAGES = ("en",)  # CLIP/MetaCLIP build English sets
REJECTED_TEXT_CHARS = 4096  # rejected/ keeps enough of a bad value to see what it was, not 100 KB of it

REJECTED_SCHEMA = pa.schema([("reason", pa.string()), ("source", pa.string()),
                             ("url", pa.string()), ("caption", pa.string())])

log = logging.getLogger(__name__)


# ---- pure per-element functions ------------------------------------------------------------------------

def normalize_caption(text: str) -> str:
    """HTML-unescaped, NFC, single-spaced caption: 'Caf&eacute;\\n  au lait' -> 'Café au lait'."""
    if "&" in text:  # every HTML character reference starts with '&'
        text = html.unescape(text)
    if not text.isascii():  # ASCII text is already NFC
        text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())


def raw_row_reason(row: dict[str, Any]) -> str | None:
    """Why a raw pool row cannot become a candidate at all, or None."""
    if row.get("reason"):
        return row["reason"]
    url, caption = row["url"], row["caption"]
    if url is None or url == "":
        return MISSING_URL
    if caption is None:
        return MISSING_CAPTION
    if not isinstance(url, str):
        return NON_STRING_URL
    if not isinstance(caption, str):
        return NON_STRING_CAPTION
    return None


# scheme, then a host that starts with no path/query/fragment character and holds no whitespace
_HTTP_URL = re.compile(r"https?://[^/?#\s]+(?:[/?#]\S*)?\Z", re.IGNORECASE)


def url_reason(url: str) -> str | None:
    """None for an http(s) URL with a host and no whitespace (what img2dataset can fetch), else NOT_HTTP_URL.

    A regular expression rather than urllib's urlsplit: same verdicts on real URLs at ~1/10 of the cost
    (urlsplit's cache is useless on a stream of distinct URLs), and this runs on every row of the pool."""
    return None if _HTTP_URL.match(url) else NOT_HTTP_URL


def caption_reason(caption: str, min_chars: int, max_chars: int, min_words: int) -> str | None:
    """Length filters on a normalized caption."""
    if not caption:
        return EMPTY_CAPTION
    if len(caption) < min_chars:
        return CAPTION_TOO_SHORT
    if len(caption) > max_chars:
        return CAPTION_TOO_LONG
    if min_words > 1 and len(caption.split(" ", min_words)) < min_words:
        return TOO_FEW_WORDS
    return None


MATCHERS = ("pyahocorasick", "ahocorasick-rs")
DEFAULT_MATCHER = "pyahocorasick"  # the design's named library; bench/bench_match.py measures both


class QueryMatcher:
    """All queries whose spaced form occurs in a caption's spaced form: one Aho-Corasick pass.

    Entries are stored as `" " + query + " "`; matching them against `spacing(caption)` is exactly
    MetaCLIP's whole-token test, because spacing() separates every token by one space. Overlapping and
    nested hits ("new", "new york", "york") are all reported: both libraries yield every occurrence
    (pyahocorasick's `iter`; ahocorasick-rs with the standard match kind and `overlapping=True`).
    pyahocorasick stores plain ints (STORE_INTS: ~2x less memory than Python objects); ahocorasick-rs
    (Rust) returns pattern indexes and needs several times less memory (bench/bench_match.py).
    A string listed twice (two ids) is stored once and expanded through `_also`.
    """

    def __init__(self, queries: list[str], backend: str = DEFAULT_MATCHER):
        first_id: dict[str, int] = {}
        self._also: dict[int, tuple[int, ...]] = {}
        for qid, query in enumerate(queries):
            key = f" {query} "
            if key in first_id:
                first = first_id[key]
                self._also[first] = self._also.get(first, (first,)) + (qid,)
            else:
                first_id[key] = qid
        self.size, self.backend = len(queries), backend
        if backend == "pyahocorasick":
            self._automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
            for key, qid in first_id.items():
                self._automaton.add_word(key, qid)
            if first_id:
                self._automaton.make_automaton()
        elif backend == "ahocorasick-rs":
            try:
                import ahocorasick_rs  # optional: only this backend needs it
            except ImportError:
                raise RuntimeError("--matcher ahocorasick-rs needs the package: pip install ahocorasick-rs") from None

            # pattern index -> query id; the identity (no list kept) when no string is listed twice
            self._ids = list(first_id.values()) if self._also else None
            self._rs = ahocorasick_rs.AhoCorasick(list(first_id), matchkind=ahocorasick_rs.MatchKind.Standard) \
                if first_id else None
        else:
            raise ValueError(f"unknown matcher {backend!r}; expected one of {', '.join(MATCHERS)}")

    def match(self, caption: str) -> list[int]:
        """Sorted query ids contained in the caption (whole tokens, case-sensitive)."""
        if self.size == 0:
            return []
        if self.backend == "pyahocorasick":
            ids = {qid for _, qid in self._automaton.iter(spacing(caption))}
        else:
            found = self._rs.find_matches_as_indexes(spacing(caption), overlapping=True)
            ids = {index for index, _, _ in found} if self._ids is None else {self._ids[i] for i, _, _ in found}
        if self._also:
            ids.update(x for qid in list(ids) for x in self._also.get(qid, ()))
        return sorted(ids)


def query_strings(path: str) -> list[str]:
    """The `query` column of a queries.tsv, indexed by query_id, unchecked: for workers, after `run` has checked
    the file with `load_query_list`, whose check re-tokenizes every query (1.8 s vs 0.8 s for 412k queries)."""
    with fsspec.open(path, "rt", encoding="utf-8", compression="infer", newline="") as f:
        next(f)  # the header
        return [line.rstrip("\r\n").split("\t")[1] for line in f]


def candidate_record(row: dict[str, Any], matcher: QueryMatcher, min_chars: int, max_chars: int, min_words: int,
                     keep_cols: tuple[str, ...] = ()) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) or (None, reject reason) for one raw pool row: steps 1-4 of the recipe."""
    reason = raw_row_reason(row)
    if reason:
        return None, reason
    url, caption = row["url"].strip(), normalize_caption(row["caption"])
    reason = url_reason(url) or caption_reason(caption, min_chars, max_chars, min_words)
    if reason:
        return None, reason
    query_ids = matcher.match(caption)
    if not query_ids:
        return None, NO_QUERY_MATCH
    record = {"uid": uid_of(url, caption), "url": url, "caption": caption, "query_ids": query_ids,
              "source": row["source"]}
    if keep_cols:
        meta = row.get("meta") or {}
        record.update((col, None if meta.get(col) is None else str(meta[col])) for col in keep_cols)
    return record, None


def judge_batch(rows: list[dict[str, Any]], matcher: QueryMatcher, identify: lid.Identifier | None,
                languages: tuple[str, ...], min_chars: int, max_chars: int, min_words: int,
                keep_cols: tuple[str, ...] = ()) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    """(matched records, [(raw row, reject reason)]) for a batch of raw pool rows: steps 1-5 of the recipe.

    Language ID runs once over the batch's matched captions; `identify` answers None for "not sure", which
    keeps the row (`--lid-min-confidence`)."""
    matched, matched_rows, rejected = [], [], []
    for row in rows:
        record, reason = candidate_record(row, matcher, min_chars, max_chars, min_words, keep_cols)
        if reason:
            rejected.append((row, reason))
        else:
            matched.append(record)
            matched_rows.append(row)
    if identify is None or not matched:
        return matched, rejected
    kept = []
    for record, row, language in zip(matched, matched_rows, identify([r["caption"] for r in matched])):
        if language is None or language in languages:
            kept.append(record)
        else:
            rejected.append((row, WRONG_LANGUAGE))
    return kept, rejected


def _printable(value: Any) -> str | None:
    """A value as a string for rejected/ (non-strings repr'd, truncated)."""
    if value is None:
        return None
    return (value if isinstance(value, str) else repr(value))[:REJECTED_TEXT_CHARS]


def rejected_record(row: dict[str, Any], reason: str) -> dict[str, Any]:
    return {"reason": reason, "source": row["source"], "url": _printable(row.get("url")),
            "caption": _printable(row.get("caption"))}


def keep_one_per_url(matched: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(kept sorted by uid, dropped) for a table of matched records (with `source`): per URL the smallest
    (uid, source) is kept. Arrow sorts and filters the whole bucket at once: ~2 us per row, no Python loop."""
    ordered = matched.sort_by([("url", "ascending"), ("uid", "ascending"), ("source", "ascending")])
    urls = ordered["url"].combine_chunks()
    is_first = pa.concat_arrays([pa.array([True] * min(1, len(urls)), pa.bool_()),
                                 pc.not_equal(urls.slice(1), urls.slice(0, max(0, len(urls) - 1)))])
    return ordered.filter(is_first).sort_by("uid"), ordered.filter(pc.invert(is_first))


def duplicate_rejections(dropped: pa.Table) -> pa.Table:
    """rejected/ rows (REJECTED_SCHEMA) for the records keep_one_per_url dropped."""
    def printable(column: str) -> pa.ChunkedArray:
        return pc.utf8_slice_codeunits(dropped[column], 0, REJECTED_TEXT_CHARS)  # as _printable truncates

    return pa.table([pa.array([DUPLICATE_URL] * dropped.num_rows, pa.string()), dropped["source"],
                     printable("url"), printable("caption")], schema=REJECTED_SCHEMA)


# rejected/ rows by source (unique per row read); the other columns only make the order total
REJECTED_ORDER = [(col, "ascending") for col in ("source", "reason", "url", "caption")]


def carried_schema(keep_cols: tuple[str, ...]) -> pa.Schema:
    """Matched records between the judge and the URL buckets: the output schema plus `source` (dedup's tie-break)."""
    return matched_schema(keep_cols).append(pa.field("source", pa.string()))


# ---- Beam ---------------------------------------------------------------------------------------------

BATCH_ROWS = 4096  # rows per element: Beam's per-element cost spread thin, a batch of 2 KB captions is 8 MB
BUCKETS = 16  # URL buckets = output files; raise for big pools (a bucket is de-duplicated in one worker's memory)


class ReadPoolRangeFn(beam.DoFn):
    """Pool range -> batches of raw rows (every physical row once, counted as read)."""

    def __init__(self, spec: pool.PoolSpec, batch_rows: int = BATCH_ROWS):
        self.spec, self.batch_rows = spec, batch_rows
        self.read = counter(STAGE, "read")

    def process(self, prange: pool.PoolRange):
        rows = pool.read_pool_range(prange, self.spec)
        while batch := list(itertools.islice(rows, self.batch_rows)):
            self.read.inc(len(batch))
            yield batch


class JudgeBatchFn(beam.DoFn):
    """Batch of raw rows -> (bucket, (matched table, rejected table)) per bucket the batch touches.

    Steps 1-5 in one DoFn, a batch per element: Beam's per-element cost is paid per batch, not per row.
    Matched records go to the bucket of their URL (so that step 6 sees every row of one URL together),
    rejected records to the bucket of their source (spread evenly). Parts travel as Arrow tables: Beam
    pickles a table's buffers (~1.6 us per row there and back) instead of coding every dict (~7 us)."""

    def __init__(self, query_path: str, languages: tuple[str, ...], lid_backend: str, lid_min_confidence: float,
                 bounds: tuple[int, int, int], keep_cols: tuple[str, ...], matcher: str, buckets: int):
        self.query_path, self.languages, self.matcher_backend = query_path, languages, matcher
        self.lid_backend, self.lid_min_confidence = lid_backend, lid_min_confidence
        self.bounds, self.keep_cols, self.buckets = bounds, keep_cols, buckets
        self.schema = carried_schema(keep_cols)
        self._rejected: dict[str, Any] = {}

    def setup(self):
        self.matcher = QueryMatcher(query_strings(self.query_path), self.matcher_backend)  # once per worker
        self.identify = lid.load_identifier(self.lid_backend, self.lid_min_confidence) if self.languages else None

    def process(self, rows: list[dict[str, Any]]):
        matched, rejected = judge_batch(rows, self.matcher, self.identify, self.languages, *self.bounds,
                                        keep_cols=self.keep_cols)
        parts: dict[int, tuple[list, list]] = {}
        for record in matched:
            parts.setdefault(beamio.bucket_of(record["url"], self.buckets), ([], []))[0].append(record)
        for row, reason in rejected:
            if reason not in self._rejected:
                self._rejected[reason] = counter(STAGE, f"rejected_{reason}")
            self._rejected[reason].inc()
            parts.setdefault(beamio.bucket_of(row["source"], self.buckets), ([], []))[1].append(
                rejected_record(row, reason))
        for bucket, (bucket_matched, bucket_rejected) in parts.items():
            yield bucket, (pa.Table.from_pylist(bucket_matched, schema=self.schema),
                           pa.Table.from_pylist(bucket_rejected, schema=REJECTED_SCHEMA))


class KeepOnePerUrlFn(beam.DoFn):
    """(bucket, parts) -> (bucket, kept sorted by uid, rejected sorted by source), as tables: step 6.
    A part is a (matched, rejected) pair of tables, or None (the marker that makes an empty bucket exist)."""

    def __init__(self, keep_cols: tuple[str, ...]):
        self.schema = carried_schema(keep_cols)
        self.kept = counter(STAGE, "kept")
        self.duplicates = counter(STAGE, f"rejected_{DUPLICATE_URL}")

    def process(self, item: tuple[int, Iterable[tuple[pa.Table, pa.Table] | None]]):
        bucket, parts = item
        parts = [part for part in parts if part is not None]
        matched = pa.concat_tables([self.schema.empty_table(), *(m for m, _ in parts)])
        kept, dropped = keep_one_per_url(matched)
        self.kept.inc(kept.num_rows)
        if dropped.num_rows:  # a counter is reported once touched: no `duplicate_url: 0` in the manifest
            self.duplicates.inc(dropped.num_rows)
        rejected = pa.concat_tables([REJECTED_SCHEMA.empty_table(), *(r for _, r in parts),
                                     duplicate_rejections(dropped)])
        # One chunk each: the parquet bytes must not depend on how many batches fed the bucket.
        yield bucket, kept.drop_columns(["source"]).combine_chunks(), rejected.sort_by(REJECTED_ORDER).combine_chunks()


class WriteBucketFn(beam.DoFn):
    """(bucket, kept, rejected) -> its two part files (atomic, through fsspec); emits {query_id: kept rows}."""

    def __init__(self, out: str, buckets: int):
        self.out, self.buckets = out, buckets

    def process(self, item: tuple[int, pa.Table, pa.Table]):
        bucket, kept, rejected = item
        name = f"part-{bucket:05d}-of-{self.buckets:05d}.parquet"
        beamio.write_parquet_file(f"{self.out}/{name}", kept, kept.schema)
        beamio.write_parquet_file(f"{self.out}/rejected/{name}", rejected, REJECTED_SCHEMA)
        counts = pc.value_counts(pc.list_flatten(kept["query_ids"]))
        yield dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))


class AddQueryCountsFn(beamio.CountQueryIdsFn):
    """Per-bucket {query_id: count} dicts -> their sum (the buckets hold disjoint rows)."""

    def add_input(self, acc: dict[int, int], counts: dict[int, int]) -> dict[int, int]:
        return beamio.add_counts(acc, counts)


class ReadCandidatePool(beam.PTransform):
    """Pool file ranges -> batches of raw rows; ranges are spread over workers, rows read by fsspec."""

    def __init__(self, ranges: list[pool.PoolRange], spec: pool.PoolSpec, batch_rows: int = BATCH_ROWS):
        super().__init__()
        self.ranges, self.spec, self.batch_rows = ranges, spec, batch_rows

    def expand(self, pbegin):
        return (pbegin
                | "ListRanges" >> beam.Create(self.ranges)
                | "SpreadRanges" >> beam.Reshuffle()
                | "ReadRows" >> beam.ParDo(ReadPoolRangeFn(self.spec, self.batch_rows)))


class MatchCaptionsToQueries(beam.PTransform):
    """Batches of raw rows -> (bucket, kept table, rejected table) for every bucket 0..buckets-1:
    filters, matching, LID, then URL de-duplication inside each bucket."""

    def __init__(self, query_path: str, languages: tuple[str, ...] = DEFAULT_LANGUAGES,
                 lid_backend: str = lid.DEFAULT_LID_BACKEND, min_chars: int = MIN_CAPTION_CHARS,
                 max_chars: int = MAX_CAPTION_CHARS, min_words: int = MIN_WORDS, keep_cols: tuple[str, ...] = (),
                 matcher: str = DEFAULT_MATCHER, buckets: int = BUCKETS,
                 lid_min_confidence: float = lid.DEFAULT_MIN_CONFIDENCE):
        super().__init__()
        if buckets < 1:
            raise ValueError(f"buckets must be >= 1, got {buckets}")
        self.buckets, self.keep_cols = buckets, tuple(keep_cols)
        self.judge_fn = JudgeBatchFn(query_path, tuple(languages), lid_backend, lid_min_confidence,
                                     (min_chars, max_chars, min_words), tuple(keep_cols), matcher, buckets)

    def expand(self, row_batches):
        judged = row_batches | "JudgeBatches" >> beam.ParDo(self.judge_fn)
        # A None part per bucket, so that every bucket reaches KeepOnePerUrl and gets its files.
        markers = row_batches.pipeline | "ListBuckets" >> beam.Create([(b, None) for b in range(self.buckets)])
        return ((judged, markers)
                | "AddMarkers" >> beam.Flatten()
                | "GroupByBucket" >> beam.GroupByKey()
                | "KeepOnePerUrl" >> beam.ParDo(KeepOnePerUrlFn(self.keep_cols)))


# ---- entry point --------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m pipeline.match", description=__doc__.split("\n")[0])
    p.add_argument("--pool", action="append", required=True, help="pool file or glob (local or fsspec); repeatable")
    p.add_argument("--pool-format", default="auto", choices=("auto", *pool.FORMATS))
    p.add_argument("--url-col", default="url", help="URL column name (0-based position with --no-header)")
    p.add_argument("--caption-col", default="caption", help="caption column name (position with --no-header)")
    p.add_argument("--no-header", action="store_true", help="TSV/CSV files have no header line")
    p.add_argument("--keep-cols", default="", help="comma-separated source columns to keep in the output")
    p.add_argument("--queries", required=True, help="queries.tsv written by the queries stage")
    p.add_argument("--out", required=True, help="output directory (local or fsspec)")
    p.add_argument("--min-caption-chars", type=int, default=MIN_CAPTION_CHARS)
    p.add_argument("--max-caption-chars", type=int, default=MAX_CAPTION_CHARS)
    p.add_argument("--min-words", type=int, default=MIN_WORDS)
    p.add_argument("--languages", default=",".join(DEFAULT_LANGUAGES), help="comma-separated ISO 639-1 codes")
    p.add_argument("--no-language-filter", action="store_true", help="keep captions in any language")
    p.add_argument("--lid-backend", default=lid.DEFAULT_LID_BACKEND, choices=lid.LID_BACKENDS)
    p.add_argument("--lid-min-confidence", type=float, default=lid.DEFAULT_MIN_CONFIDENCE,
                   help="reject as wrong_language only when the top language is at least this probable "
                        "(default %(default)s, chosen by measurement: see pipeline/lid.py)")
    p.add_argument("--matcher", default=DEFAULT_MATCHER, choices=MATCHERS, help="Aho-Corasick library")
    p.add_argument("--buckets", type=int, default=BUCKETS,
                   help="URL buckets = output part files (default %(default)s; ~1 per million matched rows)")
    p.add_argument("--split-bytes", type=int, default=pool.RANGE_BYTES,
                   help="read splittable pool files in ranges of about this many bytes (default %(default)s)")
    return p.parse_known_args(argv)


def check_settings(args: argparse.Namespace) -> None:
    if not 0 <= args.min_caption_chars <= args.max_caption_chars:
        raise ValueError("need 0 <= --min-caption-chars <= --max-caption-chars")
    if args.min_words < 0:
        raise ValueError("--min-words must be >= 0")
    if not args.no_language_filter and not [c for c in args.languages.split(",") if c.strip()]:
        raise ValueError("--languages is empty: name languages or pass --no-language-filter")
    if not 0.0 <= args.lid_min_confidence <= 1.0:
        raise ValueError("--lid-min-confidence must be in [0, 1]")
    if args.buckets < 1 or args.split_bytes < 1:
        raise ValueError("--buckets and --split-bytes must be >= 1")


def run(argv: list[str] | None = None) -> dict:
    """Run the stage; returns the manifest. Bad files or settings exit with one error line."""
    args, beam_args = parse_args(argv)
    started = time.monotonic()
    keep_cols = tuple(c.strip() for c in args.keep_cols.split(",") if c.strip())
    spec = pool.PoolSpec(args.pool_format, args.url_col, args.caption_col, not args.no_header, keep_cols)
    languages = () if args.no_language_filter else tuple(c.strip() for c in args.languages.split(",") if c.strip())
    try:
        check_settings(args)
        queries = load_query_list(args.queries)
        paths = pool.expand_pool(args.pool)
        pool.check_pool_files(paths, spec)
        ranges = [prange for path in paths for prange in pool.plan_ranges(path, spec, args.split_bytes)]
        if languages:
            lid.load_identifier(args.lid_backend)  # fail here, not on a worker, if the model is missing
        QueryMatcher([], args.matcher)  # likewise for a matcher library that is not installed
    except (QueryListError, pool.PoolError, ValueError, RuntimeError) as e:
        raise SystemExit(f"match: {e}") from None
    out = args.out.rstrip("/")
    inputs = [beamio.input_info(path) for path in (args.queries, *paths)]
    beamio.clear_previous_output(out)
    log.info("matching %d pool files (%d ranges) against %d queries -> %s", len(paths), len(ranges), len(queries),
             out)

    with beam.Pipeline(options=pipeline_options(beam_args)) as p:
        row_batches = p | "ReadPool" >> ReadCandidatePool(ranges, spec)
        bucket_results = row_batches | "MatchCaptions" >> MatchCaptionsToQueries(
            args.queries, languages, args.lid_backend, args.min_caption_chars, args.max_caption_chars,
            args.min_words, keep_cols, args.matcher, args.buckets, args.lid_min_confidence)
        _ = (bucket_results
             | "WriteBuckets" >> beam.ParDo(WriteBucketFn(out, args.buckets))
             | "CountPerQuery" >> beam.CombineGlobally(AddQueryCountsFn())
             | "WriteQueryCounts" >> beam.Map(
                 lambda counts: beamio.write_counts_tsv(f"{out}/query_counts.tsv", query_strings(args.queries),
                                                        {"count": counts})))
    counters = beamio.manifest_counters(read_counters(p.result, STAGE))
    settings = dict(vars(args))
    settings.update(languages=list(languages), keep_cols=list(keep_cols), beam_args=beam_args)
    manifest = write_manifest(out, stage=STAGE, settings=settings, inputs=inputs, counters=counters,
                              wall_time_s=time.monotonic() - started,
                              extra={"pool_ranges": len(ranges), "outputs": {"matched": f"{out}/part-*.parquet",
                                                 "query_counts": f"{out}/query_counts.tsv",
                                                 "rejected": f"{out}/rejected/part-*.parquet"}})
    log.info("match: read %d, kept %d, rejected %s", counters["read"], counters["kept"], counters["rejected"])
    return manifest


def main(argv: list[str] | None = None) -> None:
    beamio.configure_logging()
    run(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
