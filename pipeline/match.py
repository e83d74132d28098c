"""Stage 2, `match`: candidate (image URL, text) pairs -> pairs whose text contains a query.

In:  a candidate pool (`--pool GLOB`, repeatable): parquet / TSV / CSV / JSONL with url + caption columns
     (`--url-col/--caption-col`, img2dataset's convention), or Common Crawl WAT files (`<img>` alt text);
     the query list `queries/<name>/queries.tsv` of the `queries` stage.
Out: `<out>/part-KKKKK-of-NNNNN.parquet` (`uid, url, caption, query_ids` + `--keep-cols`);
     `<out>/query_counts.tsv` (`query_id, query, count`, every query, zero matches included);
     `<out>/rejected/part-*.parquet` (`reason, source, url, caption`); `<out>/manifest.json`.

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
  5. language ID (default: English only, fastText lid.176, see `pipeline.lid` for the measurement behind
     that default) only on rows that matched: LID is the costliest check and can change the outcome only there;
  6. exact duplicate URLs: of all surviving rows with one URL, the one with the smallest uid (then
     source) is kept, whichever worker saw it first (MetaCLIP de-duplicates its pool by URL).
Steps 1-5 run in one DoFn (one Beam element hop per row); step 6 is a GroupByKey on the URL.
Every row read ends kept or rejected with one reason; Beam counters feed the manifest (read = kept + rejected).

Run:  python -m pipeline.match --pool 'data/pool/*.parquet' --url-col URL --caption-col TEXT \\
          --queries queries/enwiki/queries.tsv --out work/matched [--runner=... other Beam options]
      (or `make match`). CC3M's headerless TSV: `--pool-format tsv --no-header --url-col 1 --caption-col 0`.
"""

from __future__ import annotations

import argparse
import html
import logging
import re
import sys
import time
import unicodedata
from typing import Any, Callable, Iterable

import ahocorasick
import apache_beam as beam
import pyarrow as pa

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
    return " ".join(unicodedata.normalize("NFC", html.unescape(text)).split())


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


def judge_row(row: dict[str, Any], matcher: QueryMatcher, language: Callable[[str], str | None] | None,
              languages: tuple[str, ...], min_chars: int, max_chars: int, min_words: int,
              keep_cols: tuple[str, ...] = ()) -> tuple[dict[str, Any] | None, str | None]:
    """(matched record, None) or (None, reject reason) for one raw pool row: steps 1-5 of the recipe."""
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
    if language is not None and language(caption) not in languages:
        return None, WRONG_LANGUAGE
    record = {"uid": uid_of(url, caption), "url": url, "caption": caption, "query_ids": query_ids,
              "source": row["source"]}
    if keep_cols:
        meta = row.get("meta") or {}
        record.update((col, None if meta.get(col) is None else str(meta[col])) for col in keep_cols)
    return record, None


def _printable(value: Any) -> str | None:
    """A value as a string for rejected/ (non-strings repr'd, truncated)."""
    if value is None:
        return None
    return (value if isinstance(value, str) else repr(value))[:REJECTED_TEXT_CHARS]


def rejected_record(row: dict[str, Any], reason: str) -> dict[str, Any]:
    return {"reason": reason, "source": row["source"], "url": _printable(row.get("url")),
            "caption": _printable(row.get("caption"))}


def pick_url_winner(records: Iterable[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(kept, dropped) among records sharing one URL: the smallest (uid, source) is kept."""
    records = sorted(records, key=lambda r: (r["uid"], r["source"]))
    return records[0], records[1:]


# ---- Beam ---------------------------------------------------------------------------------------------

class ReadPoolFileFn(beam.DoFn):
    """Pool file path -> raw rows (every physical row once, counted as read)."""

    def __init__(self, spec: pool.PoolSpec):
        self.spec = spec
        self.read = counter(STAGE, "read")

    def process(self, path: str):
        for row in pool.read_pool_file(path, self.spec):
            self.read.inc()
            yield row


class FilterAndMatchFn(beam.DoFn):
    """Raw row -> matched record, or a rejected record on the 'rejected' output (steps 1-5 in one DoFn:
    one Beam element hop per row instead of five keeps the stage near bare Aho-Corasick speed)."""

    def __init__(self, query_path: str, languages: tuple[str, ...], lid_backend: str,
                 min_chars: int, max_chars: int, min_words: int, keep_cols: tuple[str, ...],
                 matcher: str = DEFAULT_MATCHER):
        self.query_path, self.languages, self.lid_backend = query_path, languages, lid_backend
        self.matcher_backend = matcher
        self.bounds = (min_chars, max_chars, min_words)
        self.keep_cols = keep_cols
        self._rejected: dict[str, Any] = {}

    def setup(self):
        self.matcher = QueryMatcher(load_query_list(self.query_path), self.matcher_backend)  # once per worker
        self.language = lid.load_identifier(self.lid_backend) if self.languages else None

    def process(self, row: dict[str, Any]):
        record, reason = judge_row(row, self.matcher, self.language, self.languages, *self.bounds,
                                   keep_cols=self.keep_cols)
        if reason is None:
            yield record
            return
        if reason not in self._rejected:
            self._rejected[reason] = counter(STAGE, f"rejected_{reason}")
        self._rejected[reason].inc()
        yield beam.pvalue.TaggedOutput("rejected", rejected_record(row, reason))


class KeepOnePerUrlFn(beam.DoFn):
    """(url, records) -> the kept record; the others to 'rejected' as duplicate_url."""

    def __init__(self):
        self.kept = counter(STAGE, "kept")
        self.duplicates = counter(STAGE, f"rejected_{DUPLICATE_URL}")

    def process(self, item: tuple[str, Iterable[dict[str, Any]]]):
        winner, losers = pick_url_winner(item[1])
        for loser in losers:
            self.duplicates.inc()
            yield beam.pvalue.TaggedOutput("rejected", rejected_record(loser, DUPLICATE_URL))
        self.kept.inc()
        winner = dict(winner)
        del winner["source"]
        yield winner


class ReadCandidatePool(beam.PTransform):
    """Pool file paths -> raw rows; files are spread over workers, rows read by fsspec."""

    def __init__(self, paths: list[str], spec: pool.PoolSpec):
        super().__init__()
        self.paths, self.spec = paths, spec

    def expand(self, pbegin):
        return (pbegin
                | "ListFiles" >> beam.Create(self.paths)
                | "SpreadFiles" >> beam.Reshuffle()
                | "ReadRows" >> beam.ParDo(ReadPoolFileFn(self.spec)))


class MatchCaptionsToQueries(beam.PTransform):
    """Raw rows -> (matched records, rejected records): filters, matching, LID, URL de-duplication."""

    def __init__(self, query_path: str, languages: tuple[str, ...] = DEFAULT_LANGUAGES,
                 lid_backend: str = lid.DEFAULT_LID_BACKEND, min_chars: int = MIN_CAPTION_CHARS,
                 max_chars: int = MAX_CAPTION_CHARS, min_words: int = MIN_WORDS, keep_cols: tuple[str, ...] = (),
                 matcher: str = DEFAULT_MATCHER):
        super().__init__()
        self.match_fn = FilterAndMatchFn(query_path, tuple(languages), lid_backend, min_chars, max_chars,
                                         min_words, tuple(keep_cols), matcher)

    def expand(self, raw_rows):
        judged = raw_rows | "FilterAndMatch" >> beam.ParDo(self.match_fn).with_outputs("rejected", main="matched")
        deduped = (judged.matched
                   | "KeyByUrl" >> beam.Map(lambda r: (r["url"], r))
                   | "GroupByUrl" >> beam.GroupByKey()
                   | "KeepOnePerUrl" >> beam.ParDo(KeepOnePerUrlFn()).with_outputs("rejected", main="kept"))
        rejected = (judged.rejected, deduped.rejected) | "MergeRejected" >> beam.Flatten()
        return deduped.kept, rejected


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
    p.add_argument("--matcher", default=DEFAULT_MATCHER, choices=MATCHERS, help="Aho-Corasick library")
    return p.parse_known_args(argv)


def check_settings(args: argparse.Namespace) -> None:
    if not 0 <= args.min_caption_chars <= args.max_caption_chars:
        raise ValueError("need 0 <= --min-caption-chars <= --max-caption-chars")
    if args.min_words < 0:
        raise ValueError("--min-words must be >= 0")
    if not args.no_language_filter and not [c for c in args.languages.split(",") if c.strip()]:
        raise ValueError("--languages is empty: name languages or pass --no-language-filter")


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
        if languages:
            lid.load_identifier(args.lid_backend)  # fail here, not on a worker, if the model is missing
        QueryMatcher([], args.matcher)  # likewise for a matcher library that is not installed
    except (QueryListError, pool.PoolError, ValueError, RuntimeError) as e:
        raise SystemExit(f"match: {e}") from None
    out = args.out.rstrip("/")
    inputs = [beamio.input_info(path) for path in (args.queries, *paths)]
    beamio.clear_previous_output(out)
    log.info("matching %d pool files against %d queries -> %s", len(paths), len(queries), out)

    with beam.Pipeline(options=pipeline_options(beam_args)) as p:
        raw_rows = p | "ReadPool" >> ReadCandidatePool(paths, spec)
        matched, rejected = raw_rows | "MatchCaptions" >> MatchCaptionsToQueries(
            args.queries, languages, args.lid_backend, args.min_caption_chars, args.max_caption_chars,
            args.min_words, keep_cols, args.matcher)
        # Beam's writer, one file per bundle: no shuffle (a deterministic layout would cost a GroupByKey of every
        # row, as much as matching itself on the local runner); the set of rows is deterministic, and balance
        # writes its own output in a deterministic layout.
        _ = matched | "WriteMatched" >> beam.io.WriteToParquet(
            f"{out}/part", matched_schema(keep_cols), codec="zstd", file_name_suffix=".parquet")
        _ = rejected | "WriteRejected" >> beam.io.WriteToParquet(
            f"{out}/rejected/part", REJECTED_SCHEMA, codec="zstd", file_name_suffix=".parquet")
        _ = (matched
             | "QueryIds" >> beam.Map(lambda r: r["query_ids"])
             | "CountPerQuery" >> beam.CombineGlobally(beamio.CountQueryIdsFn())
             | "WriteQueryCounts" >> beam.Map(
                 lambda counts: beamio.write_counts_tsv(f"{out}/query_counts.tsv", load_query_list(args.queries),
                                                        {"count": counts})))
    counters = beamio.manifest_counters(read_counters(p.result, STAGE))
    settings = dict(vars(args))
    settings.update(languages=list(languages), keep_cols=list(keep_cols), beam_args=beam_args)
    manifest = write_manifest(out, stage=STAGE, settings=settings, inputs=inputs, counters=counters,
                              wall_time_s=time.monotonic() - started,
                              extra={"outputs": {"matched": f"{out}/part-*.parquet",
                                                 "query_counts": f"{out}/query_counts.tsv",
                                                 "rejected": f"{out}/rejected/part-*.parquet"}})
    log.info("match: read %d, kept %d, rejected %s", counters["read"], counters["kept"], counters["rejected"])
    return manifest


def main(argv: list[str] | None = None) -> None:
    beamio.configure_logging()
    run(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
