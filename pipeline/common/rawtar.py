"""Fast reading and byte-for-byte copying of WebDataset shard members, for `dedup` (stage 5).

Python's tarfile parses and rebuilds every 512-byte header in Python (~60 us a member, measured with
cProfile on 256 px JPEG shards: more than hashing the image). img2dataset's shards hold regular files with
short uid names, each preceded by a per-file PAX header that carries only its mtime; so this module reads a
ustar header with a few slices, checks its checksum, applies a PAX header's `path` and `size` records, and
keeps all the header bytes to write them back unchanged. Anything else (global PAX or GNU long-name headers,
base-256 sizes, links) makes `iter_members` re-read the whole stream with tarfile, so every valid tar is
handled; only the common cases are fast.

Errors are tarfile's: `tarfile.ReadError` for a bad checksum, data cut short, or a stream without the
end-of-archive blocks (a tar truncated exactly at a member boundary reads cleanly otherwise).
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Iterable, Iterator
from typing import BinaryIO, NamedTuple

from pipeline.common import files

log = logging.getLogger(__name__)

BLOCK = tarfile.BLOCKSIZE            # 512
RECORD = tarfile.RECORDSIZE          # 10240: tarfile pads archives to a whole record
REGULAR = (b"0", b"\0")              # typeflags of a plain file
PAX = b"x"                           # per-file extended header: records for the member that follows
USTAR_MAGIC = b"ustar\x00"           # POSIX ustar (has a name prefix field); GNU writes b"ustar  \x00"


class Member(NamedTuple):
    name: str
    header: bytes    # the member's header block(s), written back unchanged when copying
    data: bytes


class NeedsTarfile(Exception):
    """A header this module does not parse itself; the caller reads the stream with tarfile instead."""


def parse_header(header: bytes, pax: bool = False) -> tuple[str, int, bool]:
    """(name, size, is_regular_file) of a ustar header block; ReadError on a bad checksum, NeedsTarfile if unusual.

    `pax=True` also accepts a per-file PAX header block (its size is that of its records).
    """
    stored = header[148:156].strip(b" \0")
    try:
        checksum = int(stored or b"0", 8)
    except ValueError:
        raise tarfile.ReadError("bad checksum field") from None
    if checksum != sum(header[:148]) + 8 * 32 + sum(header[156:]):
        raise tarfile.ReadError("bad checksum")
    typeflag = header[156:157]
    if typeflag not in REGULAR and typeflag != b"5" and not (pax and typeflag == PAX) or header[124] & 0x80:
        raise NeedsTarfile(f"typeflag {typeflag!r}")
    name = header[:100].split(b"\0", 1)[0]
    if header[257:263] == USTAR_MAGIC and header[345] != 0:
        name = header[345:500].split(b"\0", 1)[0] + b"/" + name
    size = int(header[124:136].strip(b" \0") or b"0", 8)
    return name.decode("utf-8", "surrogateescape"), size, typeflag in REGULAR


def parse_pax_records(data: bytes) -> dict[str, str]:
    """The 'LEN key=value\\n' records of a PAX extended header (POSIX.1-2001); ReadError if malformed."""
    records, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        length, space, _ = data[pos:pos + 21].partition(b" ")
        if not space or not length.isdigit() or int(length) < 5 or data[pos + int(length) - 1:pos + int(length)] != b"\n":
            raise tarfile.ReadError("malformed pax header")
        key, eq, value = data[pos + len(length) + 1:pos + int(length) - 1].partition(b"=")
        if not eq:
            raise tarfile.ReadError("malformed pax header")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += int(length)
    return records


def _read_exactly(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise tarfile.ReadError("unexpected end of data")
    return data


def _read_header(f: BinaryIO) -> bytes | None:
    header = f.read(BLOCK)
    if not header:
        raise tarfile.ReadError("no end-of-archive marker (truncated at a member boundary)")
    if len(header) != BLOCK:
        raise tarfile.ReadError("unexpected end of data")
    return None if header == bytes(BLOCK) else header


def iter_fast(f: BinaryIO) -> Iterator[Member]:
    while (header := _read_header(f)) is not None:
        name, size, regular = parse_header(header, pax=True)
        records = {}
        if header[156:157] == PAX:  # its records, then the member's own ustar header
            pax_data = _read_exactly(f, size + -size % BLOCK)
            records = parse_pax_records(pax_data[:size])
            if (member_header := _read_header(f)) is None:
                raise tarfile.ReadError("pax header before the end-of-archive marker")
            name, size, regular = parse_header(member_header)
            header += pax_data + member_header
        if "path" in records:
            name = records["path"]
        if "size" in records:
            if not records["size"].isdigit():
                raise tarfile.ReadError("malformed pax size")
            size = int(records["size"])
        data = _read_exactly(f, size)
        _read_exactly(f, -size % BLOCK)
        if regular:
            yield Member(name, header, data)


def iter_with_tarfile(f: BinaryIO) -> Iterator[Member]:
    with tarfile.open(fileobj=f, mode="r|") as tar:
        for info in tar:
            if info.isfile():
                data = tar.extractfile(info).read()
                yield Member(info.name, info.tobuf(tarfile.PAX_FORMAT), data)


def iter_members(f: BinaryIO) -> Iterator[Member]:
    """Regular-file members of an uncompressed tar stream, in order (fast path, tarfile for the rest).

    The stream must be seekable for the fallback (local files and fsspec files are).
    """
    start = f.tell()
    produced = 0
    try:
        for member in iter_fast(f):
            produced += 1
            yield member
    except NeedsTarfile:
        f.seek(start)
        for i, member in enumerate(iter_with_tarfile(f)):
            if i >= produced:   # the ones before were already yielded by the fast path
                yield member


def sample_key(member_name: str) -> tuple[str, str]:
    """('dir/key', 'ext') of a member name, webdataset's convention: the extension starts at the first dot."""
    directory, _, base = member_name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{directory}/{key}" if directory else key), ext.lower()


def group_by_key(members: Iterator[Member]) -> Iterator[tuple[str, list[Member]]]:
    """(key, members) per sample: consecutive members with the same `sample_key`."""
    key, group = None, []
    for m in members:
        member_key = sample_key(m.name)[0]
        if member_key != key and key is not None:
            yield key, group
            group = []
        key = member_key
        group.append(m)
    if key is not None:
        yield key, group


def extension(member: Member) -> str:
    return sample_key(member.name)[1]


class TarWriter:
    """Writes members' header and data bytes unchanged, then the end-of-archive blocks, as tarfile would."""

    def __init__(self, f: BinaryIO):
        self.f, self.written = f, 0

    def add(self, member: Member) -> None:
        pad = -len(member.data) % BLOCK
        for chunk in (member.header, member.data, bytes(pad)):
            self.f.write(chunk)
        self.written += len(member.header) + len(member.data) + pad

    def close(self) -> None:
        end = 2 * BLOCK
        end += -(self.written + end) % RECORD
        self.f.write(bytes(end))


def member(name: str, data: bytes, mtime: int = 0) -> Member:
    """A new regular-file member (ustar header), e.g. for tests."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), mtime
    return Member(name, info.tobuf(tarfile.USTAR_FORMAT), data)


def iter_raw_samples(path: str) -> Iterable[tuple[str, list[Member]]]:
    """(key, members) per sample of a shard, members in tar order; stops at a corrupt tail."""
    try:
        with files.open_file(path, "rb") as f:
            yield from group_by_key(iter_members(f))
    except (OSError, tarfile.TarError, EOFError) as e:
        log.warning("%s: stopped copying at a corrupt member: %s", path, e)
