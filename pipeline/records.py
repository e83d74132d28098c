"""Records and file formats shared between stages: pair ids, the query list, the matched-pair schema.

- `uid_of(url, caption)`: the stable 128-bit id of a normalized (url, caption) pair, as DataComp keys its
  pool by a hash; the same pair gets the same id in every run, on every runner and in every later stage
  (the shard key of `shards` is this uid).
- `load_query_list(path)`: reads `queries/<name>/queries.tsv` as written by the `queries` stage
  (header `query_id, query, source, count, pmi`; ids 0..N-1; queries already `normalize_entry`-ed).
  Any other format raises `QueryListError` with the file and line, never a parser traceback.

Rows travel between Beam steps as plain dicts whose keys are the parquet columns (`MATCHED_COLUMNS` plus
any source metadata columns the user kept): the set of columns differs per pool, so a fixed dataclass
would not fit, and dicts go to and from parquet without a conversion step.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import fsspec
import pyarrow as pa

from pipeline.text import normalize_entry

QUERY_LIST_HEADER = ("query_id", "query", "source", "count", "pmi")
MATCHED_COLUMNS = ("uid", "url", "caption", "query_ids")


def matched_schema(keep_cols: Iterable[str] = ()) -> pa.Schema:
    """Parquet schema of `match` output: `uid, url, caption, query_ids` plus kept source columns (strings)."""
    return pa.schema([("uid", pa.string()), ("url", pa.string()), ("caption", pa.string()),
                      ("query_ids", pa.list_(pa.int32())), *((col, pa.string()) for col in keep_cols)])


class QueryListError(ValueError):
    """The query file is not a `queries.tsv` as the `queries` stage writes it."""


def uid_of(url: str, caption: str) -> str:
    """128-bit hex id of a normalized (url, caption) pair (blake2b; '\\x1f' cannot occur in either part)."""
    return hashlib.blake2b(f"{url}\x1f{caption}".encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def parse_query_list(lines, name: str = "<queries>") -> list[str]:
    """Queries indexed by query_id from the lines of a queries.tsv (header first); QueryListError if malformed."""
    lines = iter(lines)
    header = next(lines, None)
    if header is None or tuple(header.rstrip("\r\n").split("\t")) != QUERY_LIST_HEADER:
        raise QueryListError(f"{name}: not a query list: the first line must be the header "
                             f"{chr(9).join(QUERY_LIST_HEADER)!r} (see the `queries` stage)")
    queries: list[str] = []
    for line_no, line in enumerate(lines, start=2):
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) != len(QUERY_LIST_HEADER):
            raise QueryListError(f"{name}:{line_no}: expected {len(QUERY_LIST_HEADER)} tab-separated fields, "
                                 f"got {len(fields)}")
        query_id, query = fields[0], fields[1]
        if query_id != str(len(queries)):
            raise QueryListError(f"{name}:{line_no}: query_id {query_id!r}, expected {len(queries)} "
                                 "(ids must be 0..N-1 in order)")
        if not query or normalize_entry(query) != query:
            raise QueryListError(f"{name}:{line_no}: query {query!r} is empty or not normalized "
                                 "(expected pipeline.text.normalize_entry of it)")
        queries.append(query)
    return queries


def load_query_list(path: str) -> list[str]:
    """Read a local or fsspec queries.tsv (optionally compressed) into a list indexed by query_id."""
    try:
        with fsspec.open(path, "rt", encoding="utf-8", compression="infer", newline="") as f:
            return parse_query_list(f, name=path)
    except UnicodeDecodeError as e:
        raise QueryListError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except FileNotFoundError:
        raise QueryListError(f"{path}: query file not found") from None
