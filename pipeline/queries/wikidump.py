"""Reading MediaWiki export dumps as independent splits: whole files, or groups of bz2 streams.

In: `.xml`, `.xml.bz2` (also `.gz`/`.xz`/`.zst` through fsspec), local or fsspec paths (listed by pipeline.common.files).
Out: `WikiSplit`s (what one worker reads) and, per split, the decoded XML text in bounded chunks.

Wikipedia's `pages-articles-multistream.xml.bz2` is a concatenation of bz2 streams of 100 pages each,
and its `...-multistream-index.txt.bz2` lists the byte offset of every stream. A split is a byte range
of whole streams (about `split_bytes` compressed), so the 22 GB enwiki dump becomes ~350 independent
work items a cluster runner spreads over workers, each decompressed alone. Any other file is one split,
read sequentially with bounded memory.

Decompression is most of the stage's CPU. When the optional `indexed_bzip2` package is installed, its
bzip2 decoder (one thread) reads bz2 splits with ~20% less CPU than libbz2 (bench/bench_queries.py);
Python's `bz2` stays the reference: any error of the fast decoder, or bytes of the range it did not
consume (it stops silently at garbage between streams), hands the split to `bz2`, which re-reads it,
skips what was already handed out and reports the error as it always has. Output bytes are identical.
"""

from __future__ import annotations

import bz2
import codecs
import io
import logging
import os
import re
from dataclasses import dataclass
from typing import Iterator

from pipeline.common import files
from pipeline.queries.wikitext import CorruptInput, TruncatedInput, looks_like_mediawiki

try:  # optional fast path, see the module docstring
    import indexed_bzip2
except ImportError:
    indexed_bzip2 = None

log = logging.getLogger(__name__)

READ_BLOCK = 1 << 20          # compressed bytes read per call: bounds memory per worker
OUTPUT_CHUNK = 1 << 20        # decompressed bytes per call
DEFAULT_SPLIT_BYTES = 64 << 20
DUMP_SUFFIXES = (".xml", ".xml.bz2", ".xml.gz", ".xml.xz", ".xml.zst")   # what a folder of dumps contributes


@dataclass(frozen=True)
class WikiSplit:
    path: str
    start: int = 0
    end: int | None = None   # None: to the end of the file
    bz2: bool = False        # decompress as (possibly concatenated) bz2 streams ourselves


class InputError(ValueError):
    """A dump input that cannot be used at all (missing, empty, not MediaWiki): one clear message."""


def index_path_for(path: str) -> str | None:
    """The multistream index beside a dump ('...-multistream.xml.bz2' -> '...-multistream-index.txt.bz2')."""
    if not path.endswith("-multistream.xml.bz2"):
        return None
    candidate = path[: -len(".xml.bz2")] + "-index.txt.bz2"
    return candidate if files.exists(candidate) else None


def read_stream_offsets(index_path: str) -> list[int]:
    """Sorted distinct stream offsets from a multistream index ('offset:page_id:title' per line)."""
    offsets = set()
    with files.open_file(index_path, "rt", compression="infer", encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            head = line.split(":", 1)[0]
            if not head.strip():
                continue
            if not head.isdigit():
                raise InputError(f"{index_path}:{n}: not a multistream index line: {line[:80]!r}")
            offsets.add(int(head))
    return sorted(offsets)


def group_streams(offsets: list[int], split_bytes: int) -> list[tuple[int, int | None]]:
    """Byte ranges of whole streams, each about split_bytes long; the first starts at 0 (header stream)."""
    starts = [0]
    for off in offsets:
        if off - starts[-1] >= split_bytes:
            starts.append(off)
    return [(s, e) for s, e in zip(starts, starts[1:] + [None])]


def plan_splits(path: str, split_bytes: int = DEFAULT_SPLIT_BYTES) -> list[WikiSplit]:
    """The splits of one dump file: stream groups when a multistream index is beside it, else the file."""
    compressed = path.endswith(".bz2")
    index = index_path_for(path) if compressed else None
    if index is None:
        return [WikiSplit(path, bz2=compressed)]
    ranges = group_streams(read_stream_offsets(index), split_bytes)
    log.info("%s: %d splits from multistream index %s", path, len(ranges), index)
    return [WikiSplit(path, start, end, bz2=True) for start, end in ranges]


def _raw_blocks(f, start: int, end: int | None) -> Iterator[bytes]:
    f.seek(start)
    remaining = None if end is None else end - start
    while remaining is None or remaining > 0:
        block = f.read(READ_BLOCK if remaining is None else min(READ_BLOCK, remaining))
        if not block:
            return
        if remaining is not None:
            remaining -= len(block)
        yield block


def decompress_bz2_streams(blocks: Iterator[bytes]) -> Iterator[bytes]:
    """Decompress concatenated bz2 streams. Raises TruncatedInput for a cut-off or corrupt stream."""
    decomp, fed = bz2.BZ2Decompressor(), False
    for block in blocks:
        while block or (fed and not decomp.eof and not decomp.needs_input):
            try:
                # bounded output: a reader that stops early (check_dump's 64 KB) decompresses ~1 bz2 block,
                # not the whole READ_BLOCK of compressed input (~4 MB of XML)
                out = decomp.decompress(block, max_length=OUTPUT_CHUNK)
            except OSError as e:  # "Invalid data stream": not bz2, or garbage between streams
                raise CorruptInput(f"corrupt bz2 data: {e}") from None
            fed = True
            if out:
                yield out
            if decomp.eof:
                block = decomp.unused_data
                decomp, fed = bz2.BZ2Decompressor(), False
            else:
                block = b""
    if fed and not decomp.eof:
        raise TruncatedInput("bz2 stream ends before its end-of-stream marker")


class _ByteRange(io.RawIOBase):
    """Bytes [start, end) of an open binary file as a seekable file of their own (for indexed_bzip2)."""

    def __init__(self, f, start: int, end: int | None):
        super().__init__()
        self.f, self.start = f, start
        self.end = f.seek(0, os.SEEK_END) if end is None else end
        self.pos = 0
        f.seek(start)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.end - self.start}[whence]
        self.pos = max(0, base + offset)
        self.f.seek(self.start + self.pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:
        want = min(len(buffer), max(0, self.end - self.start - self.pos))
        data = self.f.read(want)
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)


def _fast_bz2_range(f, start: int, end: int | None) -> Iterator[bytes]:
    """indexed_bzip2's bytes of [start, end); returns how many it handed out when it failed or stopped
    before the end of the range (then `bz2` must take over), None when the whole range was read."""
    window, handed_out = _ByteRange(f, start, end), 0
    try:
        with indexed_bzip2.open(window, parallelization=1) as decoded:
            while data := decoded.read(OUTPUT_CHUNK):
                yield data
                handed_out += len(data)
            # bit offsets of the blocks it decoded; the last one is the last end-of-stream marker (48 bits of
            # magic + the 32-bit stream CRC, then padding to a byte). Its tell_compressed() cannot be used here:
            # it counts the byte it peeked at for the next stream, so one stray trailing byte would pass.
            last_marker = max(decoded.raw.bz2reader.block_offsets(), default=None)
    except Exception as e:  # noqa: BLE001 -- whatever it raised (std::exception, bad magic, CRC, API drift)
        log.info("indexed_bzip2 failed at %d bytes (%s): re-reading with bz2", handed_out, e)
        return handed_out
    if last_marker is None or (last_marker + 80 + 7) // 8 != window.end - window.start:
        return handed_out  # it stopped early, or bytes follow the last stream: bz2 reports them
    return None


def _skip_bytes(chunks: Iterator[bytes], n: int) -> Iterator[bytes]:
    for chunk in chunks:
        if n >= len(chunk):
            n -= len(chunk)
            continue
        yield chunk[n:] if n else chunk
        n = 0


def decompress_bz2_range(f, start: int, end: int | None, fast: bool = True) -> Iterator[bytes]:
    """Decompressed bytes of the bz2 streams in [start, end) of an open binary file (see the module
    docstring for the fast path; `fast=False` or no indexed_bzip2: Python's bz2 alone)."""
    handed_out = 0
    if fast and indexed_bzip2 is not None:
        handed_out = yield from _fast_bz2_range(f, start, end)
        if handed_out is None:
            return
    yield from _skip_bytes(decompress_bz2_streams(_raw_blocks(f, start, end)), handed_out)


def read_split_text(split: WikiSplit, fast_bz2: bool = True) -> Iterator[str]:
    """Decoded XML text of a split in chunks; invalid UTF-8 becomes U+FFFD (never a word character)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    if split.bz2:
        with files.open_file(split.path, "rb") as f:
            for data in decompress_bz2_range(f, split.start, split.end, fast=fast_bz2):
                yield decoder.decode(data)
    else:
        try:
            with files.open_file(split.path, "rb", compression="infer") as f:
                while data := f.read(READ_BLOCK):
                    yield decoder.decode(data)
        except EOFError as e:  # gzip/xz/zstd cut short
            raise TruncatedInput(f"compressed file cut short: {e}") from None
    yield decoder.decode(b"", final=True)


def check_dump(path: str) -> None:
    """Fail early with one clear message for an empty, unreadable or non-MediaWiki input."""
    if files.size(path) == 0:
        raise InputError(f"{path} is empty")
    head = ""
    try:
        for chunk in read_split_text(WikiSplit(path, bz2=path.endswith(".bz2"))):
            head += chunk
            if len(head) >= 64 << 10:
                break
    except CorruptInput as e:
        if not head:
            raise InputError(f"{path}: cannot read: {e}") from None
    except TruncatedInput:
        if not head:
            return  # cut off before its first block: the run counts it as a truncated stream
    except (OSError, EOFError) as e:
        raise InputError(f"{path}: cannot read: {e}") from None
    if not looks_like_mediawiki(head):
        snippet = re.sub(r"\s+", " ", head[:60])
        raise InputError(f"{path} is not a MediaWiki export (starts with {snippet!r})")
