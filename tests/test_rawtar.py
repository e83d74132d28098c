"""The fast tar reader/copier of dedup agrees with tarfile, falls back to it, and reports damage."""

from __future__ import annotations

import io
import tarfile

import pytest

from pipeline.common import rawtar


def tar_bytes(files: list[tuple[str, bytes]], fmt=tarfile.USTAR_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


FILES = [("a1.jpg", b"\xff\xd8 jpeg"), ("a1.txt", b"caption"), ("a1.json", b"{}"), ("b2.jpg", b"x" * 1000),
         ("sub/c3.jpg", b""), ("d" * 120 + ".txt", b"long name")]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_equal_tarfile_in_every_format(fmt):
    files = FILES if fmt != tarfile.USTAR_FORMAT else FILES[:-1]   # ustar cannot hold a 124-character name
    members = list(rawtar.iter_members(io.BytesIO(tar_bytes(files, fmt))))
    assert [(m.name, m.data) for m in members] == files


def test_copy_is_byte_identical_to_tarfile_output():
    original = tar_bytes(FILES[:5])
    out = io.BytesIO()
    writer = rawtar.TarWriter(out)
    for m in rawtar.iter_members(io.BytesIO(original)):
        writer.add(m)
    writer.close()
    assert out.getvalue() == original


def test_group_by_key_uses_the_first_dot():
    members = [rawtar.member(n, d) for n, d in FILES[:5] + [("e.seg.cls", b"1")]]
    assert [(k, [rawtar.extension(m) for m in g]) for k, g in rawtar.group_by_key(iter(members))] == [
        ("a1", ["jpg", "txt", "json"]), ("b2", ["jpg"]), ("sub/c3", ["jpg"]), ("e", ["seg.cls"])]


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:700], "unexpected end of data"),                        # cut inside a member
    (lambda b: b[:2048], "no end-of-archive marker"),                     # cut exactly after 2 members
    (lambda b: b[:10] + b"Z" + b[11:], "bad checksum"),                   # a flipped header byte
])
def test_damage_is_a_read_error(damage, message):
    data = damage(tar_bytes(FILES[:5]))
    with pytest.raises(tarfile.ReadError, match=message):
        list(rawtar.iter_members(io.BytesIO(data)))


def test_pax_headers_are_read_by_the_fast_path_and_copied_unchanged():
    # img2dataset writes a per-file PAX header (mtime only); long names come as a PAX 'path' record
    original = tar_bytes(FILES, tarfile.PAX_FORMAT)
    members = list(rawtar.iter_fast(io.BytesIO(original)))   # raises NeedsTarfile if it had to fall back
    assert [(m.name, m.data) for m in members] == FILES
    assert all(m.header[156:157] == b"x" for m in members if len(m.name) > 100)
    out = io.BytesIO()
    writer = rawtar.TarWriter(out)
    for m in members:
        writer.add(m)
    writer.close()
    assert out.getvalue() == original


def test_pax_records_parse_and_reject_damage():
    assert rawtar.parse_pax_records(b"27 mtime=1795422796.594658\n12 path=a.b\n\0\0") == {
        "mtime": "1795422796.594658", "path": "a.b"}
    for bad in (b"99 path=a\n", b"x path=a\n", b"11 patha.b\n"):
        with pytest.raises(tarfile.ReadError, match="malformed pax"):
            rawtar.parse_pax_records(bad)


def test_global_pax_header_falls_back_to_tarfile():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "x"}) as tar:
        for name, data in FILES[:2]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(rawtar.NeedsTarfile):
        list(rawtar.iter_fast(io.BytesIO(buf.getvalue())))
    assert [(m.name, m.data) for m in rawtar.iter_members(io.BytesIO(buf.getvalue()))] == FILES[:2]
