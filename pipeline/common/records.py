"""Records and file formats shared between stages: pair ids, the query list, the matched-pair schema.

- `uid_of(url, caption)`: the stable 128-bit id of a normalized (url, caption) pair, as DataComp keys its
  pool by a hash; the same pair gets the same id in every run, on every runner and in every later stage
  (the shard key of `shards` is this uid). `uids_of` computes a column of them.
- `load_query_list(path)`: reads `queries/<name>/queries.tsv` as written by the `queries` stage
  (header `query_id, query, source, count, pmi`; ids 0..N-1; queries already `normalize_entry`-ed).
  Any other format raises `QueryListError` with the file and line, never a parser traceback.

Rows travel between Beam steps as plain dicts, or (in `match`, where a dict per row cost more than the
matching) as Arrow tables, whose keys are the parquet columns (`MATCHED_COLUMNS` plus any source metadata
columns the user kept): the set of columns differs per pool, so a fixed dataclass would not fit.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.common import files
from pipeline.common.text import PUNCT_TO_WRAP, normalize_entry

QUERY_LIST_HEADER = ("query_id", "query", "source", "count", "pmi")
MATCHED_COLUMNS = ("uid", "url", "caption", "query_ids")


def matched_schema(keep_cols: Iterable[str] = ()) -> pa.Schema:
    """Parquet schema of `match` output: `uid, url, caption, query_ids` plus kept source columns (strings)."""
    return pa.schema([("uid", pa.string()), ("url", pa.string()), ("caption", pa.string()),
                      ("query_ids", pa.list_(pa.int32())), *((col, pa.string()) for col in keep_cols)])


def uid_of_sample(key: str, sample: dict[str, bytes]) -> str:
    """A shard sample's uid: its json's `uid` (the `shards` stage writes it), else its key (= the uid in our shards).
    `dedup` records it, the trainer and `stats` skip by it (`--exclude`)."""
    try:
        return str(json.loads(sample["json"])["uid"]) if "json" in sample else key
    except (ValueError, KeyError, TypeError):
        return key


class DecisionsError(ValueError):
    """An `--exclude` spec names no decisions file, or a file without a uid column."""


def decision_uids(specs: Iterable[str]) -> frozenset[str]:
    """The uids of `dedup` decision files: each spec a parquet file with a `uid` column, or a folder (its
    `decisions.parquet`, else every `*.parquet` in it), local or fsspec, as `files.expand` lists them;
    DecisionsError with one line on a missing or bad spec."""
    uids: set[str] = set()
    for spec in specs:
        folder_decisions = files.join(spec, "decisions.parquet")
        try:
            paths = [folder_decisions] if files.exists(folder_decisions) else files.expand(spec, ".parquet")
        except files.NoFilesError:
            raise DecisionsError(f"--exclude {spec}: no decisions (a parquet file, or a folder holding decisions.parquet)") from None
        for path in paths:
            try:
                with files.open_file(path) as f:
                    uids.update(u for u in pq.read_table(f, columns=["uid"])["uid"].to_pylist() if u is not None)
            except (OSError, KeyError, ValueError) as e:   # pyarrow: not parquet (OSError/ArrowInvalid), no uid column
                raise DecisionsError(f"--exclude {path}: not a decisions file with a uid column ({e})") from None
    return frozenset(uids)


class QueryListError(ValueError):
    """The query file is not a `queries.tsv` as the `queries` stage writes it."""


def uid_of(url: str, caption: str) -> str:
    """128-bit hex id of a normalized (url, caption) pair (blake2b; '\\x1f' cannot occur in either part)."""
    return hashlib.blake2b(f"{url}\x1f{caption}".encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def uids_of(urls: list[str], captions: list[str]) -> list[str]:
    """`[uid_of(u, c) for u, c in zip(urls, captions)]` without a Python call per pair (hashlib's BLAKE2b)."""
    blake2b = hashlib.blake2b
    return [blake2b(f"{url}\x1f{caption}".encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
            for url, caption in zip(urls, captions)]


_MARKS = re.compile("[" + re.escape("".join(PUNCT_TO_WRAP)) + "]")


def _all_normalized(queries: list[str]) -> bool:
    """True only if every query is non-empty and its own normalize_entry (False: look line by line).

    A query is its own normalize_entry exactly when it has no leading, trailing or double space, no other
    whitespace, and every MetaCLIP mark in it stands between spaces or at an end. Checked on all queries at
    once, joined by newlines, in C loops: 0.1 s for 412k queries, against 0.8 s re-tokenizing each."""
    joined = "\n".join(queries)
    if not all(queries) or joined.count("\n") != len(queries) - 1 or "  " in joined or "\n " in joined \
            or " \n" in joined or joined.startswith(" ") or joined.endswith(" ") or _OTHER_SPACE.search(joined):
        return False
    end = len(joined) - 1
    return all((k == 0 or joined[k - 1] in " \n") and (k == end or joined[k + 1] in " \n")
               for k in (m.start() for m in _MARKS.finditer(joined)))


_OTHER_SPACE = re.compile(r"[^\S \n]")  # whitespace other than a space (and the joining newline)


def parse_query_list(lines, name: str = "<queries>") -> list[str]:
    """Queries indexed by query_id from the lines of a queries.tsv (header first); QueryListError if malformed.

    A well-formed list is checked column-wise (`_all_normalized`); any doubt goes to the line-by-line check,
    which names the first bad line. No list per line is kept: 412k of them would make Python's garbage
    collector walk the heap again and again (it doubled the time with Beam's heap loaded)."""
    lines = iter(lines)
    header = next(lines, None)
    if header is None or tuple(header.rstrip("\r\n").split("\t")) != QUERY_LIST_HEADER:
        raise QueryListError(f"{name}: not a query list: the first line must be the header "
                             f"{chr(9).join(QUERY_LIST_HEADER)!r} (see the `queries` stage)")
    body = [line.rstrip("\r\n") for line in lines]
    tabs = len(QUERY_LIST_HEADER) - 1
    if all(line.count("\t") == tabs for line in body) \
            and [line.partition("\t")[0] for line in body] == [str(i) for i in range(len(body))]:
        queries = [line.split("\t", 2)[1] for line in body]
        if _all_normalized(queries):
            return queries
    for line_no, line in enumerate(body, start=2):
        fields = line.split("\t")
        if len(fields) != len(QUERY_LIST_HEADER):
            raise QueryListError(f"{name}:{line_no}: expected {len(QUERY_LIST_HEADER)} tab-separated fields, "
                                 f"got {len(fields)}")
        query_id, query = fields[0], fields[1]
        if query_id != str(line_no - 2):
            raise QueryListError(f"{name}:{line_no}: query_id {query_id!r}, expected {line_no - 2} "
                                 "(ids must be 0..N-1 in order)")
        if not query or normalize_entry(query) != query:
            raise QueryListError(f"{name}:{line_no}: query {query!r} is empty or not normalized "
                                 "(expected pipeline.common.text.normalize_entry of it)")
    return [line.split("\t", 2)[1] for line in body]


def text_lines(text: str) -> list[str]:
    """The lines of a text as a file opened with newline="" iterates them (ends: \\n, \\r\\n or \\r), without
    their ends; one split of the whole text instead of a readline per line."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def load_query_list(path: str) -> list[str]:
    """Read a local or fsspec queries.tsv (optionally compressed) into a list indexed by query_id."""
    try:
        with files.open_file(path, "rt", encoding="utf-8", compression="infer", newline="") as f:
            return parse_query_list(text_lines(f.read()), name=path)
    except UnicodeDecodeError as e:
        raise QueryListError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except FileNotFoundError:
        raise QueryListError(f"{path}: query file not found") from None
