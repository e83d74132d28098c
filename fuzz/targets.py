"""Differential checks of every C entry point against its Python twin, one function per fuzz target.

Each check takes arbitrary bytes, decodes them into the entry point's arguments (deterministically, so a saved
input reproduces), calls the C function and its Python twin, and raises AssertionError where they disagree; a
memory error or undefined behaviour in the C aborts the process under the sanitizer build (`make fuzz`,
`make sanitize`). fuzz/run.py feeds them coverage-guided inputs (atheris); tests/test_fuzz.py replays the
regression corpus (tests/fuzz_corpus/<target>/) and runs each fuzzer briefly. Text comes from the bytes as
UTF-8 with 'surrogateescape', so invalid bytes become lone surrogates, which str can hold and the C must take.

Targets:
- `wikicore`: `_wikicore.SplitCounter` (markup stripping + tokenizing + counting) against
  `wikicore.PySplitCounter`: tokens per page, `result()` and `parts()`, over up to 8 pages ('\\0' separates them);
- `check_rows`: `_matchcore.check_rows` against `match.check_rows_py` (steps 1-3: raw checks, normalisation, URL
  and length filters, spacing) over rows of url/caption/reason ('\\0' separates fields, '\\x01' + a letter makes a
  non-string value), with bounds from the first bytes;
- `hit_columns`: `_matchcore.hit_columns` against `match.hit_columns_py` on tuples of ints from the bytes.
"""

from __future__ import annotations

import struct

from pipeline.common.beamio import bucket_of
from pipeline.match import stage as match
from pipeline.queries import wikicore

MAX_PAGES = 8
NON_STRINGS = {"N": None, "I": 7, "F": 3.5, "B": b"bytes"}
READER_REASONS = (None, None, None, "", "malformed_row", "invalid_utf8")
MAX_CHARS = (3, 10, 30, 2000)


def text_of(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def outcome(fn, *args):
    """('ok', value) or ('error', exception class name): the twins must agree on both."""
    try:
        return "ok", fn(*args)
    except (ValueError, TypeError, OverflowError, IndexError, UnicodeError) as e:
        return "error", type(e).__name__


# ---- wikicore --------------------------------------------------------------------------------------------

def wikicore_check(data: bytes) -> None:
    buckets = 1 + (data[0] % 16) if data else 1
    pages = text_of(data[1:]).split("\0")[:MAX_PAGES]
    c, py = wikicore.new_split_counter("c"), wikicore.PySplitCounter()
    for page in pages:
        assert c.add_page(page) == py.add_page(page), page
    assert c.result() == py.result()
    assert sorted(c.parts(buckets, bucket_of)) == sorted(py.parts(buckets, bucket_of))
    c.clear()
    assert c.result() == ({}, {})


# ---- check_rows --------------------------------------------------------------------------------------------

def field(piece: str):
    return NON_STRINGS.get(piece[1:2], piece) if piece.startswith("\x01") else piece


def check_rows_args(data: bytes) -> tuple:
    head = data[:4].ljust(4, b"\0")
    min_chars, max_chars, min_words = head[0] % 8, MAX_CHARS[head[1] % 4], head[2] % 5
    with_reasons = head[3] & 1
    pieces = [field(p) for p in text_of(data[4:]).split("\0")]
    urls, captions = pieces[0::2], pieces[1::2]
    urls = urls[:len(captions)]
    reasons = [READER_REASONS[(i * 7 + head[3]) % len(READER_REASONS)] for i in range(len(urls))] \
        if with_reasons else None
    return urls, captions, reasons, min_chars, max_chars, min_words


def check_rows_check(data: bytes) -> None:
    args = check_rows_args(data)
    c = outcome(match.check_rows, *args)
    py = outcome(match.check_rows_py, *args)
    assert c == py, (args, c, py)


# ---- hit_columns --------------------------------------------------------------------------------------------

def hit_columns_args(data: bytes) -> tuple:
    """Tuples of 0-3 ints (8 bytes each, some widened past int64) and the two field numbers (-2..2: a tuple index
    may count from the end)."""
    head = data[:2].ljust(2, b"\0")
    position_field, id_field = head[0] % 5 - 2, head[1] % 5 - 2
    hits, rest = [], data[2:]
    while rest:
        size, rest = rest[0] % 4, rest[1:]
        values = []
        for _ in range(size):
            chunk, rest = rest[:8].ljust(8, b"\0"), rest[8:]
            value = struct.unpack("<q", chunk)[0]
            values.append(value * 2**40 if value % 97 == 0 and value else value)  # past int64 now and then
        hits.append(tuple(values))
    return hits, position_field, id_field


def hit_columns_check(data: bytes) -> None:
    args = hit_columns_args(data)
    c = outcome(lambda *a: tuple(col.tolist() for col in match.hit_columns(*a)), *args)
    py = outcome(lambda *a: tuple(col.tolist() for col in match.hit_columns_py(*a)), *args)
    assert c[0] == py[0] and (c[0] == "error" or c == py), (args, c, py)


TARGETS = {"wikicore": wikicore_check, "check_rows": check_rows_check, "hit_columns": hit_columns_check}
