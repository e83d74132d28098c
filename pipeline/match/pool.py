"""Candidate-pool readers for the `match` stage: tabular files (parquet, TSV, CSV, JSONL) and Common Crawl WAT.

In: local or fsspec files (listed by pipeline.common.files; a folder means its pool-format files). Out: raw rows `{"source", "url", "caption", "meta"}` where url and caption
are whatever the file held (None, numbers, strings with undecodable bytes kept as surrogates); a row the
reader could not parse at all carries `"reason": "malformed_row"`. Judging rows is `match.judge_batch`'s
job, so every physical row is read exactly once and counted exactly once.
Reading by column, splitting files into ranges, formats and row sources: the comment below the imports.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import logging
import re
from typing import Any, Iterator
from urllib.parse import urljoin

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.common import files

# Reading, splitting and formats
#
# The stage reads rows by column (`read_pool_batches` -> `RowBatch`: a list per column, the same rows as
# `read_pool_range` gives one dict at a time): a dict per row cost more than matching it does not, and the
# judge works column-wise. Parquet batches come straight from Arrow's record batches (no dict per row);
# the text formats and WAT are parsed row by row and transposed.
#
# Splitting (a 50 GB pool file must be read by many workers): `plan_ranges` cuts a file into `PoolRange`s
# of about `range_bytes`, each read by `read_pool_range` on its own, and the ranges of a file together
# give exactly the rows of reading it whole:
# - parquet: runs of consecutive row groups (a row group is parquet's unit of parallel reading);
# - uncompressed TSV and JSONL: byte ranges; a line belongs to the range its first byte is in (the reader
#   of a range skips the partial line it starts in and reads past its end to finish its last line, as
#   Beam's splittable text source does); a TSV header line is read separately by every range;
# - not split, read whole by one worker: compressed text (`.gz`, `.bz2`...: a compressed stream cannot be
#   entered in the middle), CSV (a quoted field may hold a newline, so a byte offset cannot tell where a
#   record starts) and WAT (gzip members of variable size; one file is ~1 GB, Common Crawl's own unit of work).
# Lines are split on `\\n` only (`\\r\\n` endings are stripped; a lone `\\r` is whitespace inside a field), so
# split and whole reads agree byte for byte. Row sources name the row: `path:N` (parquet row number),
# `path:byteN` (offset of the line or CSV record: line numbers cannot be known inside a range), WAT
# `path:recordN:imgK`.
#
# Column names follow img2dataset's `url_col` / `caption_col` convention (LAION parquet: `URL`/`TEXT`).
# A headerless TSV/CSV (CC3M: `caption \\t url`) is read with `header=False` and 0-based column positions.
# TSV is split on tabs without quoting (as the CC3M and img2dataset TSVs are written); CSV uses the csv module.
# Empty lines are not rows. WAT (Common Crawl's metadata records): one row per `<img>` link, i.e. every
# `Links` entry with `path == "IMG@/src"`, its `alt` text as caption and its `url` resolved against the
# page's `<base href>` or URL (urljoin), the page URL kept as `meta["page_url"]`.
#
# Whole-file problems (no file matches, an unknown format, a corrupt parquet footer, a missing column) raise
# `PoolError` before the pipeline starts: `check_pool_files` is called by `match.run`.

MALFORMED_ROW = "malformed_row"
INVALID_UTF8 = "invalid_utf8"
FORMATS = ("parquet", "tsv", "csv", "jsonl", "wat")
POOL_SUFFIXES = {  # checked in order: ".warc.wat.gz" before ".gz" style suffixes
    ".parquet": "parquet", ".wat.gz": "wat", ".wat": "wat",
    ".tsv": "tsv", ".tsv.gz": "tsv", ".csv": "csv", ".csv.gz": "csv",
    ".jsonl": "jsonl", ".jsonl.gz": "jsonl", ".json": "jsonl", ".json.gz": "jsonl",
}
PARQUET_BATCH_ROWS = 8192  # bounded memory per worker, large enough to amortise Arrow's per-batch cost
BATCH_ROWS = 4096  # rows per RowBatch (match.BATCH_ROWS): a batch of 2 KB captions is 8 MB
RANGE_BYTES = 64 << 20  # as Beam's file sources split: enough work per range to amortise opening the file

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


@dataclasses.dataclass(frozen=True)
class PoolRange:
    """A part of one pool file: row groups [start, stop) of a parquet file, bytes [start, stop) of a text
    file (the lines that start in it), or the whole file when stop is None."""
    path: str
    start: int = 0
    stop: int | None = None


@dataclasses.dataclass
class RowBatch:
    """Consecutive raw rows of one pool range, one list per column (row i is `rows()[i]`).

    `meta` holds a list per kept column (None where a row lacks the value); `reason` the reader's reject reason
    per row (`malformed_row`, `invalid_utf8`) or None when no row of the batch has one."""
    source: list[str]
    url: list[Any]
    caption: list[Any]
    meta: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    reason: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.source)

    def row(self, i: int) -> dict[str, Any]:
        """Row i as `read_pool_range` gives it (meta: the kept columns; a rejected row's meta is dropped)."""
        row = {"source": self.source[i], "url": self.url[i], "caption": self.caption[i],
               "meta": {col: values[i] for col, values in self.meta.items()}}
        if self.reason is not None and self.reason[i]:
            row.update(meta={}, reason=self.reason[i])
        return row

    def rows(self) -> list[dict[str, Any]]:
        return [self.row(i) for i in range(len(self))]

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], keep_cols: tuple[str, ...] = ()) -> RowBatch:
        """The batch of row dicts (as `read_pool_range` yields them); `keep_cols` name the meta columns kept."""
        reasons = [row.get("reason") for row in rows]
        return cls([row["source"] for row in rows], [row["url"] for row in rows], [row["caption"] for row in rows],
                   {col: [(row.get("meta") or {}).get(col) for row in rows] for col in keep_cols},
                   reasons if any(reasons) else None)


def file_format(path: str, requested: str) -> str:
    """The format of one pool file: the requested one, or by suffix for 'auto'."""
    if requested != "auto":
        return requested
    for suffix, fmt in POOL_SUFFIXES.items():
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
            with files.open_file(path, "rb") as f:
                names = pq.read_schema(f).names
        except (pa.ArrowInvalid, OSError) as e:
            raise PoolError(f"{path}: not a readable parquet file ({e})") from None
        for col in wanted:
            _column_index(names, col, path)
    elif fmt in ("tsv", "csv") and spec.header:
        header = _header(path, fmt)
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


def splittable(path: str, fmt: str) -> bool:
    """Whether a file can be read in independent ranges (see the module docstring for why not all can)."""
    return fmt == "parquet" or (fmt in ("tsv", "jsonl") and files.compression(path) is None)


def plan_ranges(path: str, spec: PoolSpec, range_bytes: int = RANGE_BYTES) -> list[PoolRange]:
    """The ranges one file is read in: about `range_bytes` each (parquet: whole row groups), in file order."""
    fmt = file_format(path, spec.format)
    if not splittable(path, fmt):
        return [PoolRange(path)]
    if fmt == "parquet":
        with files.open_file(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        ranges, first, size = [], 0, 0
        for group in range(meta.num_row_groups):
            size += meta.row_group(group).total_byte_size
            if size >= range_bytes:
                ranges.append(PoolRange(path, first, group + 1))
                first, size = group + 1, 0
        if first < meta.num_row_groups or not ranges:
            ranges.append(PoolRange(path, first, meta.num_row_groups))
        return ranges
    size = files.size(path)
    return [PoolRange(path, start, min(size, start + range_bytes)) for start in range(0, size, range_bytes)] or \
        [PoolRange(path)]


def _lines(path: str, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line) of the lines that start in [start, stop), `\\n` included; decompressed whole files."""
    with files.open_file(path, "rb", compression="infer") as f:
        offset = 0
        if start > 0:  # the line that holds byte start-1 belongs to the range before (or ends right there)
            f.seek(start - 1)
            offset = start - 1 + len(f.readline())
        while stop is None or offset < stop:
            line = f.readline()
            if not line:
                return
            yield offset, line
            offset += len(line)


def _decode_line(line: bytes) -> str:
    """A line without its ending; undecodable bytes kept as surrogates, to be judged per row."""
    return line.decode("utf-8", "surrogateescape").rstrip("\r\n")


def _csv_records(lines: Iterator[tuple[int, bytes]]) -> Iterator[tuple[int, list[str]]]:
    """(byte offset, fields) per CSV record; a quoted field may span lines."""
    end = 0

    def text() -> Iterator[str]:
        nonlocal end
        for offset, line in lines:
            end = offset + len(line)
            yield line.decode("utf-8", "surrogateescape")

    start = 0
    for fields in csv.reader(text()):
        yield start, fields
        start = end


def _tabular_records(path: str, fmt: str, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, list[str]]]:
    if fmt == "csv":
        return _csv_records(_lines(path, start, stop))
    return ((offset, _decode_line(line).split("\t")) for offset, line in _lines(path, start, stop))


def _header(path: str, fmt: str) -> list[str] | None:
    """The column names on the first line / record of a TSV or CSV file (None for an empty file)."""
    first = next(_tabular_records(path, fmt), None)
    return None if first is None else first[1]


def _read_tabular(prange: PoolRange, fmt: str, spec: PoolSpec) -> Iterator[dict[str, Any]]:
    path = prange.path
    if spec.header:
        names = _header(path, fmt)
        if names is None:
            return
        index = {col: _column_index(names, col, path) for col in (spec.url_col, spec.caption_col, *spec.keep_cols)}
    else:
        index = {col: int(col) for col in (spec.url_col, spec.caption_col, *spec.keep_cols)}
    width = max(index.values()) + 1
    records = _tabular_records(path, fmt, prange.start, prange.stop)
    if spec.header and prange.start == 0:
        next(records, None)  # the header line is not a row
    for offset, fields in records:
        if fields == [""] or not fields:
            continue  # an empty line is not a row
        row = {"source": f"{path}:byte{offset}", "url": None, "caption": None, "meta": {}}
        if len(fields) < width:
            row["reason"] = MALFORMED_ROW
        else:
            row["url"], row["caption"] = fields[index[spec.url_col]], fields[index[spec.caption_col]]
            row["meta"] = {col: fields[index[col]] for col in spec.keep_cols}
        yield row


def _read_jsonl(prange: PoolRange, spec: PoolSpec) -> Iterator[dict[str, Any]]:
    for offset, raw in _lines(prange.path, prange.start, prange.stop):
        line = _decode_line(raw)
        if not line.strip():
            continue
        row = {"source": f"{prange.path}:byte{offset}", "url": None, "caption": None, "meta": {}}
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


def _column_values(column: pa.Array) -> list[Any]:
    values = column.to_pylist()
    return [_decode(v) for v in values] if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type) \
        else values


def _read_parquet(prange: PoolRange, spec: PoolSpec) -> Iterator[dict[str, Any]]:
    """The rows of `_read_parquet_batches`, one dict each."""
    for batch in _read_parquet_batches(prange, spec, PARQUET_BATCH_ROWS):
        yield from batch.rows()


def _read_parquet_batches(prange: PoolRange, spec: PoolSpec, batch_rows: int) -> Iterator[RowBatch]:
    """Row groups [start, stop) by column: Arrow record batches become column lists, never a dict per row."""
    path = prange.path
    columns = list(dict.fromkeys((spec.url_col, spec.caption_col, *spec.keep_cols)))
    row_no = 0
    with files.open_file(path, "rb") as f:
        try:
            parquet = pq.ParquetFile(f)
            meta = parquet.metadata
            groups = list(range(prange.start, meta.num_row_groups if prange.stop is None else prange.stop))
            row_no = sum(meta.row_group(g).num_rows for g in range(prange.start))  # rows before the range
            for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=groups, columns=columns):
                values = {col: _column_values(batch.column(col)) for col in columns}
                # Arrow string columns hold valid UTF-8; only binary ones can carry undecodable bytes
                binary = [values[col] for col in columns if not pa.types.is_string(batch.column(col).type)
                          and not pa.types.is_large_string(batch.column(col).type)]
                rows = RowBatch([f"{path}:{n}" for n in range(row_no, row_no + batch.num_rows)], values[spec.url_col],
                                values[spec.caption_col], {col: values[col] for col in spec.keep_cols})
                row_no += batch.num_rows
                yield mark_invalid_utf8_batch(rows, binary) if binary else rows
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

    with files.open_file(path, "rb") as f:
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


# Text is decoded with errors="surrogateescape": an undecodable byte becomes a lone surrogate U+DC80-U+DCFF.
# JSON can also spell any lone surrogate ("\ud800"): no UTF-8 exists for either.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_surrogates(value: Any) -> bool:
    return isinstance(value, str) and not value.isascii() and _SURROGATE.search(value) is not None


def _replace_surrogates(value: Any) -> Any:
    """U+FFFD where the bytes were invalid (as a UTF-8 decoder with errors="replace" marks them)."""
    if not _has_surrogates(value):
        return value
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte (JSON's "\ud800")
        return _SURROGATE.sub("\ufffd", value)


def mark_invalid_utf8(row: dict[str, Any]) -> dict[str, Any]:
    """Reject a row holding undecodable bytes, with U+FFFD in their place (Beam and Arrow need valid UTF-8)."""
    url, caption = row["url"], row["caption"]
    if (type(url) is not str or url.isascii()) and (type(caption) is not str or caption.isascii()) \
            and not row["meta"]:
        return row  # the common case, decided without a function call per value
    values = (url, caption, *row["meta"].values())
    if not any(_has_surrogates(v) for v in values):
        return row
    return {"source": row["source"], "url": _replace_surrogates(row["url"]),
            "caption": _replace_surrogates(row["caption"]), "meta": {}, "reason": row.get("reason") or INVALID_UTF8}


def _surrogate_rows(values: list[Any]) -> list[int]:
    return [i for i, v in enumerate(values) if type(v) is str and not v.isascii() and _SURROGATE.search(v)]


def mark_invalid_utf8_batch(batch: RowBatch, columns: list[list[Any]] | None = None) -> RowBatch:
    """`mark_invalid_utf8` on every row of a batch, looking only in `columns` (default: url, caption, meta)."""
    columns = [batch.url, batch.caption, *batch.meta.values()] if columns is None else columns
    bad = sorted({i for values in columns for i in _surrogate_rows(values)})
    if not bad:
        return batch
    reasons = list(batch.reason) if batch.reason is not None else [None] * len(batch)
    url, caption, meta = list(batch.url), list(batch.caption), {col: list(v) for col, v in batch.meta.items()}
    for i in bad:
        url[i], caption[i] = _replace_surrogates(url[i]), _replace_surrogates(caption[i])
        reasons[i] = reasons[i] or INVALID_UTF8
        for values in meta.values():
            values[i] = None  # a rejected row carries no metadata (mark_invalid_utf8 drops it)
    return RowBatch(batch.source, url, caption, meta, reasons)


def _batched(rows: Iterator[dict[str, Any]], batch_rows: int, keep_cols: tuple[str, ...]) -> Iterator[RowBatch]:
    while chunk := list(itertools.islice(rows, batch_rows)):
        yield RowBatch.from_rows(chunk, keep_cols)


def read_pool_batches(prange: PoolRange, spec: PoolSpec, batch_rows: int = BATCH_ROWS) -> Iterator[RowBatch]:
    """The rows of `read_pool_range(prange, spec)` in batches of at most `batch_rows`, by column."""
    if file_format(prange.path, spec.format) == "parquet":
        return _read_parquet_batches(prange, spec, batch_rows)
    return _batched(read_pool_range(prange, spec), batch_rows, spec.keep_cols)


def read_pool_range(prange: PoolRange, spec: PoolSpec) -> Iterator[dict[str, Any]]:
    """Every row of one range of a pool file, parsed or marked malformed / invalid_utf8, in file order."""
    fmt = file_format(prange.path, spec.format)
    if fmt == "parquet":
        rows = _read_parquet(prange, spec)
    elif fmt == "wat":
        rows = _read_wat(prange.path)
    elif fmt == "jsonl":
        rows = _read_jsonl(prange, spec)
    else:
        rows = _read_tabular(prange, fmt, spec)
    return map(mark_invalid_utf8, rows)


def read_pool_file(path: str, spec: PoolSpec) -> Iterator[dict[str, Any]]:
    """Every row of one whole pool file (the reference that a file's ranges must add up to)."""
    return read_pool_range(PoolRange(path), spec)
