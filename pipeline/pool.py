"""Candidate-pool readers for the `match` stage: tabular files (parquet, TSV, CSV, JSONL) and Common Crawl WAT.

In: local or fsspec paths/globs. Out: raw rows `{"source", "url", "caption", "meta"}` where url and caption
are whatever the file held (None, numbers, strings with undecodable bytes kept as surrogates); a row the
reader could not parse at all carries `"reason": "malformed_row"`. Judging rows is `match.check_raw_row`'s
job, so every physical row is read exactly once and counted exactly once.

Column names follow img2dataset's `url_col` / `caption_col` convention (LAION parquet: `URL`/`TEXT`).
A headerless TSV/CSV (CC3M: `caption \\t url`) is read with `header=False` and 0-based column positions.
TSV is split on tabs without quoting (as the CC3M and img2dataset TSVs are written); CSV uses the csv module.
Empty lines are not rows. WAT (Common Crawl's metadata records): one row per `<img>` link, i.e. every
`Links` entry with `path == "IMG@/src"`, its `alt` text as caption and its `url` resolved against the
page's `<base href>` or URL (urljoin), the page URL kept as `meta["page_url"]`.

Whole-file problems (no file matches, an unknown format, a corrupt parquet footer, a missing column) raise
`PoolError` before the pipeline starts: `check_pool_files` is called by `match.run`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import re
from typing import Any, Iterator
from urllib.parse import urljoin

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

MALFORMED_ROW = "malformed_row"
INVALID_UTF8 = "invalid_utf8"
FORMATS = ("parquet", "tsv", "csv", "jsonl", "wat")
_SUFFIXES = {  # checked in order: ".warc.wat.gz" before ".gz" style suffixes
    ".parquet": "parquet", ".wat.gz": "wat", ".wat": "wat",
    ".tsv": "tsv", ".tsv.gz": "tsv", ".csv": "csv", ".csv.gz": "csv",
    ".jsonl": "jsonl", ".jsonl.gz": "jsonl", ".json": "jsonl", ".json.gz": "jsonl",
}
PARQUET_BATCH_ROWS = 8192  # bounded memory per worker, large enough to amortise Arrow's per-batch cost

log = logging.getLogger(__name__)


class PoolError(ValueError):
    """A pool file or setting the stage cannot read at all (as opposed to a bad row, which is counted)."""


@dataclasses.dataclass(frozen=True)
class PoolSpec:
    """How to read the pool: format ('auto' = by file suffix), column names or positions, metadata to keep."""
    format: str = "auto"
    url_col: str = "url"
    caption_col: str = "caption"
    header: bool = True
    keep_cols: tuple[str, ...] = ()


def expand_pool(patterns: list[str]) -> list[str]:
    """Sorted, de-duplicated paths matching the globs (local or fsspec URLs); PoolError if nothing matches."""
    paths: set[str] = set()
    for pattern in patterns:
        fs, _ = fsspec.core.url_to_fs(pattern)
        found = fs.glob(pattern) if any(c in pattern for c in "*?[") else ([pattern] if fs.exists(pattern) else [])
        paths.update(fs.unstrip_protocol(p) if "://" in pattern else p for p in found if not fs.isdir(p))
    if not paths:
        raise PoolError(f"empty pool: no file matches {' '.join(patterns)}")
    return sorted(paths)


def file_format(path: str, requested: str) -> str:
    """The format of one pool file: the requested one, or by suffix for 'auto'."""
    if requested != "auto":
        return requested
    for suffix, fmt in _SUFFIXES.items():
        if path.endswith(suffix):
            return fmt
    raise PoolError(f"{path}: cannot tell the pool format from the name; pass --pool-format {'|'.join(FORMATS)}")


def _column_index(names: list[str], col: str, path: str) -> int:
    if col not in names:
        raise PoolError(f"{path}: no column {col!r} (columns: {', '.join(names)})")
    return names.index(col)


def check_pool_file(path: str, spec: PoolSpec) -> None:
    """Fail early and clearly on a file that cannot be read or lacks the configured columns."""
    fmt = file_format(path, spec.format)
    wanted = (spec.url_col, spec.caption_col, *spec.keep_cols)
    if fmt == "parquet":
        try:
            with fsspec.open(path, "rb") as f:
                names = pq.read_schema(f).names
        except (pa.ArrowInvalid, OSError) as e:
            raise PoolError(f"{path}: not a readable parquet file ({e})") from None
        for col in wanted:
            _column_index(names, col, path)
    elif fmt in ("tsv", "csv") and spec.header:
        header = next(_tabular_records(path, fmt), None)
        if header is None:
            return  # an empty file has no rows: nothing to read, nothing lost
        for col in wanted:
            _column_index(header, col, path)
    elif fmt == "wat" and set(spec.keep_cols) - {"page_url"}:
        raise PoolError(f"{path}: a WAT pool has only the metadata column 'page_url' to keep")
    elif fmt in ("tsv", "csv") and not all(c.isdigit() for c in wanted):
        raise PoolError(f"{path}: without a header, --url-col/--caption-col/--keep-cols must be 0-based positions")


def check_pool_files(paths: list[str], spec: PoolSpec) -> None:
    if spec.format not in (*FORMATS, "auto"):
        raise PoolError(f"unknown --pool-format {spec.format!r}; expected one of auto, {', '.join(FORMATS)}")
    for path in paths:
        check_pool_file(path, spec)


def _text_lines(path: str) -> Iterator[str]:
    """Lines of a (possibly compressed) text file; undecodable bytes kept as surrogates to be judged per row."""
    with fsspec.open(path, "rt", encoding="utf-8", errors="surrogateescape", compression="infer", newline="") as f:
        yield from f


def _tabular_records(path: str, fmt: str) -> Iterator[list[str]]:
    lines = _text_lines(path)
    if fmt == "csv":
        yield from csv.reader(lines)
    else:
        for line in lines:
            yield line.rstrip("\r\n").split("\t")


def _read_tabular(path: str, fmt: str, spec: PoolSpec) -> Iterator[dict[str, Any]]:
    records = _tabular_records(path, fmt)
    if spec.header:
        names = next(records, None)
        if names is None:
            return
        index = {col: _column_index(names, col, path) for col in (spec.url_col, spec.caption_col, *spec.keep_cols)}
    else:
        index = {col: int(col) for col in (spec.url_col, spec.caption_col, *spec.keep_cols)}
    width = max(index.values()) + 1
    for row_no, fields in enumerate(records, start=2 if spec.header else 1):
        if fields == [""] or not fields:
            continue  # an empty line is not a row
        row = {"source": f"{path}:{row_no}", "url": None, "caption": None, "meta": {}}
        if len(fields) < width:
            row["reason"] = MALFORMED_ROW
        else:
            row["url"], row["caption"] = fields[index[spec.url_col]], fields[index[spec.caption_col]]
            row["meta"] = {col: fields[index[col]] for col in spec.keep_cols}
        yield row


def _read_jsonl(path: str, spec: PoolSpec) -> Iterator[dict[str, Any]]:
    for row_no, line in enumerate(_text_lines(path), start=1):
        if not line.strip():
            continue
        row = {"source": f"{path}:{row_no}", "url": None, "caption": None, "meta": {}}
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            row["reason"] = MALFORMED_ROW
            row["caption"] = line  # keep the raw line in rejected/ so the user can see what was wrong
        else:
            row["url"], row["caption"] = obj.get(spec.url_col), obj.get(spec.caption_col)
            row["meta"] = {col: obj.get(col) for col in spec.keep_cols}
        yield row


def _decode(value: Any) -> Any:
    """Binary parquet cells become str (undecodable bytes as surrogates, rejected later as invalid_utf8)."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _read_parquet(path: str, spec: PoolSpec) -> Iterator[dict[str, Any]]:
    columns = list(dict.fromkeys((spec.url_col, spec.caption_col, *spec.keep_cols)))
    row_no = 0
    with fsspec.open(path, "rb") as f:
        try:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
                for rec in batch.to_pylist():
                    yield {"source": f"{path}:{row_no}", "url": _decode(rec[spec.url_col]),
                           "caption": _decode(rec[spec.caption_col]),
                           "meta": {col: _decode(rec[col]) for col in spec.keep_cols}}
                    row_no += 1
        except (pa.ArrowInvalid, OSError) as e:
            # A file whose footer was fine but whose data pages are not: fail the run, naming the file.
            raise PoolError(f"{path}: corrupt parquet data after row {row_no} ({e})") from None


def image_links(wat_json: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
    """(page URL, `<img>` link entries) of one parsed WAT metadata record."""
    envelope = wat_json.get("Envelope") or {}
    page_url = (envelope.get("WARC-Header-Metadata") or {}).get("WARC-Target-URI")
    html = ((envelope.get("Payload-Metadata") or {}).get("HTTP-Response-Metadata") or {}).get("HTML-Metadata") or {}
    base = (html.get("Head") or {}).get("Base") or page_url
    links = [dict(link, base=base) for link in html.get("Links") or [] if link.get("path") == "IMG@/src"]
    return page_url, links


def _read_wat(path: str) -> Iterator[dict[str, Any]]:
    from warcio.archiveiterator import ArchiveIterator  # only WAT pools need warcio

    with fsspec.open(path, "rb") as f:
        for rec_no, record in enumerate(ArchiveIterator(f)):
            if record.rec_type != "metadata":
                continue
            source = f"{path}:record{rec_no}"
            body = record.content_stream().read()
            try:
                page_url, links = image_links(json.loads(body))
            except (ValueError, AttributeError):  # not JSON, or JSON that is not the WAT object layout
                yield {"source": source, "url": None, "caption": None, "meta": {}, "reason": MALFORMED_ROW}
                continue
            for link_no, link in enumerate(links):
                url = link.get("url")
                if isinstance(url, str) and isinstance(link["base"], str):
                    url = urljoin(link["base"], url)
                yield {"source": f"{source}:img{link_no}", "url": url, "caption": link.get("alt"),
                       "meta": {"page_url": page_url}}


_SURROGATE = re.compile("[\udc80-\udcff]")


def _has_surrogates(value: Any) -> bool:
    # Text is decoded with errors="surrogateescape": an undecodable byte becomes a lone surrogate.
    return isinstance(value, str) and not value.isascii() and _SURROGATE.search(value) is not None


def _replace_surrogates(value: Any) -> Any:
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if _has_surrogates(value) else value


def mark_invalid_utf8(row: dict[str, Any]) -> dict[str, Any]:
    """Reject a row holding undecodable bytes, with U+FFFD in their place (Beam and Arrow need valid UTF-8)."""
    values = (row["url"], row["caption"], *row["meta"].values())
    if not any(_has_surrogates(v) for v in values):
        return row
    return {"source": row["source"], "url": _replace_surrogates(row["url"]),
            "caption": _replace_surrogates(row["caption"]), "meta": {}, "reason": row.get("reason") or INVALID_UTF8}


def read_pool_file(path: str, spec: PoolSpec) -> Iterator[dict[str, Any]]:
    """Every row of one pool file, parsed or marked malformed / invalid_utf8, in file order."""
    fmt = file_format(path, spec.format)
    if fmt == "parquet":
        rows = _read_parquet(path, spec)
    elif fmt == "wat":
        rows = _read_wat(path)
    elif fmt == "jsonl":
        rows = _read_jsonl(path, spec)
    else:
        rows = _read_tabular(path, fmt, spec)
    return map(mark_invalid_utf8, rows)
