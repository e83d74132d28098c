"""Tests for demo.sample_data on hand-made archives; no test reaches the network.

The one test that runs pip points it at a loopback address nothing listens on (127.0.0.1:9), with pip's
configuration files switched off so that it cannot fall back to any other index.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from demo import sample_data
from demo.sample_data import (SOURCES, SampleDataError, SampleFile, SampleSource, ensure_samples,
                                  extract_member, main, pip_download, sha256_file, write_atomic)

REPO = Path(__file__).resolve().parents[1]
UNREACHABLE_INDEX = "http://127.0.0.1:9/simple"  # loopback "discard" port: connection refused, never the internet

WHEEL_FILES = {"pkg/data/photo.bin": bytes(range(256)) * 40, "pkg/data/vocab.txt": b"a b\nc d\n"}
SDIST_FILES = {"pkg-1.0/pkg/data/words.txt": b"one\r\ntwo\r\nthree\r\n", "pkg-1.0/setup.py": b"raise SystemExit\n"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def make_sdist(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        top = tarfile.TarInfo("pkg-1.0/pkg/data")
        top.type = tarfile.DIRTYPE
        tf.addfile(top)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def archives(tmp_path: Path) -> dict[str, Path]:
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    return {"fakewheel": make_wheel(shelf / "fakewheel-1.0-py3-none-any.whl", WHEEL_FILES),
            "fakesdist": make_sdist(shelf / "fakesdist-1.0.tar.gz", SDIST_FILES)}


def fake_sources(words_sha: str = sha(b"one\ntwo\nthree\n")) -> tuple[SampleSource, ...]:
    return (
        SampleSource("fakewheel", "fakewheel==1.0", sample_data.WHEEL, "test data", files=(
            SampleFile("pkg/data/photo.bin", "photos/photo.bin", sha(WHEEL_FILES["pkg/data/photo.bin"])),
            SampleFile("pkg/data/vocab.txt", "vocab.txt", sha(WHEEL_FILES["pkg/data/vocab.txt"])),
        )),
        SampleSource("fakesdist", "fakesdist==1.0", sample_data.SDIST, "test data", files=(
            SampleFile("pkg-1.0/pkg/data/words.txt", "words/words.txt", words_sha, strip_cr=True),
        )),
    )


class FakeFetcher:
    """Stands in for pip: copies the hand-made archive into the download folder and counts the calls."""

    def __init__(self, archives: dict[str, Path]):
        self.archives = archives
        self.calls: list[str] = []

    def __call__(self, source: SampleSource, into: Path) -> Path:
        self.calls.append(source.name)
        return Path(shutil.copy(self.archives[source.name], into))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.part"))


# --- extraction -------------------------------------------------------------------------------------------

def test_extract_member_from_wheel(archives, tmp_path):
    dest = tmp_path / "out" / "photo.bin"
    digest = extract_member(archives["fakewheel"], "pkg/data/photo.bin", dest)
    assert dest.read_bytes() == WHEEL_FILES["pkg/data/photo.bin"]
    assert digest == sha256_file(dest) == sha(WHEEL_FILES["pkg/data/photo.bin"])
    assert dest.stat().st_mode & 0o777 == 0o644  # not the 0600 of the temporary file


def test_extract_member_from_sdist_strips_cr(archives, tmp_path):
    dest = tmp_path / "out" / "words.txt"
    digest = extract_member(archives["fakesdist"], "pkg-1.0/pkg/data/words.txt", dest, strip_cr=True)
    assert dest.read_bytes() == b"one\ntwo\nthree\n"
    assert digest == sha(b"one\ntwo\nthree\n")  # the checksum is of the stripped file


def test_extract_member_keeps_cr_unless_asked(archives, tmp_path):
    dest = tmp_path / "words.txt"
    extract_member(archives["fakesdist"], "pkg-1.0/pkg/data/words.txt", dest)
    assert dest.read_bytes() == SDIST_FILES["pkg-1.0/pkg/data/words.txt"]


@pytest.mark.parametrize("kind, member", [("fakewheel", "pkg/data/nope.txt"), ("fakesdist", "pkg-1.0/nope.txt"),
                                          ("fakesdist", "pkg-1.0/pkg/data")])  # a directory is no file either
def test_extract_missing_member_raises_key_error(archives, tmp_path, kind, member):
    with pytest.raises(KeyError):
        extract_member(archives[kind], member, tmp_path / "x")
    assert not (tmp_path / "x").exists() and leftovers(tmp_path) == []


def test_checksum_mismatch_keeps_the_old_file_and_no_temporary(archives, tmp_path):
    dest = tmp_path / "vocab.txt"
    dest.write_bytes(b"previous content")
    with pytest.raises(SampleDataError, match=r"checksum mismatch for .*vocab.txt: expected sha256 0{64}"):
        extract_member(archives["fakewheel"], "pkg/data/vocab.txt", dest, expected_sha256="0" * 64)
    assert dest.read_bytes() == b"previous content"  # never replaced by the unverified file
    assert leftovers(tmp_path) == []


def test_write_atomic_leaves_nothing_when_reading_fails(tmp_path):
    class Broken(io.RawIOBase):
        def read(self, size=-1):
            raise OSError("disk went away")

    dest = tmp_path / "half.bin"
    with pytest.raises(OSError, match="disk went away"):
        write_atomic(Broken(), dest)
    assert not dest.exists() and leftovers(tmp_path) == []


class Trickle(io.RawIOBase):
    """A stream that returns at most `step` bytes per read, so CRLF pairs straddle block boundaries."""

    def __init__(self, data: bytes, step: int):
        self.data, self.step, self.pos = data, step, 0

    def read(self, size=-1):
        block = self.data[self.pos:self.pos + min(self.step, size if size > 0 else self.step)]
        self.pos += len(block)
        return block


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"\r\n")), step=st.integers(1, 7))
def test_strip_cr_is_independent_of_block_boundaries(tmp_path_factory, data, step):
    dest = tmp_path_factory.mktemp("trickle") / "f"
    digest = write_atomic(Trickle(data, step), dest, strip_cr=True)
    assert dest.read_bytes() == data.replace(b"\r", b"")
    assert digest == sha(data.replace(b"\r", b""))


# --- ensure_samples / main ----------------------------------------------------------------------------------

def test_fetch_then_no_op_when_present(archives, tmp_path, capsys):
    dest, fetch = tmp_path / "sample", FakeFetcher(archives)
    assert ensure_samples(dest, fake_sources(), fetch=fetch) == 3
    assert (dest / "photos" / "photo.bin").read_bytes() == WHEEL_FILES["pkg/data/photo.bin"]
    assert (dest / "words" / "words.txt").read_bytes() == b"one\ntwo\nthree\n"
    assert fetch.calls == ["fakewheel", "fakesdist"]
    out = capsys.readouterr().out
    assert "fakewheel==1.0: fetching 2 file(s)" in out and "fakesdist==1.0: ok" in out

    manifest = json.loads((dest / "MANIFEST.json").read_text())
    assert sorted(manifest) == ["photos/photo.bin", "vocab.txt", "words/words.txt"]
    assert manifest["words/words.txt"] == {
        "package": "fakesdist==1.0", "member": "pkg-1.0/pkg/data/words.txt", "sha256": sha(b"one\ntwo\nthree\n"),
        "bytes": 14, "crlf_stripped": True, "licence": "test data"}

    assert main(["--dest", str(dest)], sources=fake_sources(), fetch=fetch) == 0
    assert fetch.calls == ["fakewheel", "fakesdist"]  # nothing downloaded the second time
    assert capsys.readouterr().out.strip() == f"sample data present in {dest}"


def test_refetches_only_what_is_missing_or_wrong(archives, tmp_path):
    dest, fetch = tmp_path / "sample", FakeFetcher(archives)
    ensure_samples(dest, fake_sources(), fetch=fetch)
    (dest / "vocab.txt").write_bytes(b"tampered")
    photo_mtime = (dest / "photos" / "photo.bin").stat().st_mtime_ns
    fetch.calls.clear()

    assert ensure_samples(dest, fake_sources(), fetch=fetch) == 1
    assert fetch.calls == ["fakewheel"]
    assert (dest / "vocab.txt").read_bytes() == WHEEL_FILES["pkg/data/vocab.txt"]
    assert (dest / "photos" / "photo.bin").stat().st_mtime_ns == photo_mtime  # the good file was not touched


def test_only_selects_sources(archives, tmp_path):
    dest, fetch = tmp_path / "sample", FakeFetcher(archives)
    assert main(["--dest", str(dest), "--only", "fakesdist"], sources=fake_sources(), fetch=fetch) == 0
    assert fetch.calls == ["fakesdist"]
    assert sorted(json.loads((dest / "MANIFEST.json").read_text())) == ["words/words.txt"]


def test_wrong_checksum_in_table_is_one_clear_error(archives, tmp_path, caplog):
    dest = tmp_path / "sample"
    with caplog.at_level(logging.ERROR, logger="sample-data"):
        rc = main(["--dest", str(dest)], sources=fake_sources(words_sha="f" * 64), fetch=FakeFetcher(archives))
    assert rc == 2
    [record] = caplog.records
    assert re.fullmatch(r"checksum mismatch for .*words\.txt: expected sha256 f{64}, got [0-9a-f]{64}; file not kept",
                        record.getMessage())
    assert not (dest / "words" / "words.txt").exists() and leftovers(dest) == []


def test_missing_member_and_corrupt_archive_are_clear_errors(archives, tmp_path):
    missing = (SampleSource("fakewheel", "fakewheel==1.0", sample_data.WHEEL, "test data",
                            files=(SampleFile("pkg/data/absent.txt", "absent.txt", "0" * 64),)),)
    with pytest.raises(SampleDataError, match=r"^pkg/data/absent.txt is not in fakewheel-1.0-py3-none-any.whl"):
        ensure_samples(tmp_path / "a", missing, fetch=FakeFetcher(archives))

    archives["fakesdist"].write_bytes(b"\x1f\x8b\x08 not really gzip")
    with pytest.raises(SampleDataError, match=r"^cannot read fakesdist-1.0.tar.gz \(fakesdist==1.0\)"):
        ensure_samples(tmp_path / "b", fake_sources()[1:], fetch=FakeFetcher(archives))


# --- pip against an unreachable index (loopback only) -------------------------------------------------------

def offline_pip_env() -> dict[str, str]:
    """The environment with pip confined to UNREACHABLE_INDEX: no config files, links, extra indexes or cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_RETRIES="0", PIP_DEFAULT_TIMEOUT="3", PIP_NO_CACHE_DIR="1")
    return env


def test_pip_download_from_unreachable_index_raises_clear_error(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    for key, value in offline_pip_env().items():
        monkeypatch.setenv(key, value)
    source = SampleSource("x", "witbuild-no-such-sample==0.0.0", sample_data.WHEEL, "none", files=())
    with pytest.raises(SampleDataError) as err:
        pip_download(source, tmp_path, index_url=UNREACHABLE_INDEX)
    assert str(err.value).startswith("could not download witbuild-no-such-sample==0.0.0 from the package index "
                                     "(pip said: ")
    assert str(err.value).endswith("Check network/PIP_INDEX_URL.") and "\n" not in str(err.value)


def test_cli_with_unreachable_index_prints_one_line_and_exits_2(tmp_path):
    dest = tmp_path / "sample"
    proc = subprocess.run([sys.executable, "-m", "demo.sample_data", "--dest", str(dest), "--only", "gensim",
                           "--index-url", UNREACHABLE_INDEX],
                          cwd=REPO, env=offline_pip_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("sample-data: could not download gensim==4.4.0 from the package index (pip said: ")
    assert not dest.exists() or not any(dest.rglob("*.bz2"))


# --- the real table -----------------------------------------------------------------------------------------

def test_source_table_is_pinned_and_consistent():
    names = [s.name for s in SOURCES]
    dests = [f.dest for s in SOURCES for f in s.files]
    assert len(set(names)) == len(names) and len(set(dests)) == len(dests)
    for source in SOURCES:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9.]*", source.requirement)
        assert source.licence and source.files
        for f in source.files:
            assert re.fullmatch(r"[0-9a-f]{64}", f.sha256)
            assert not Path(f.dest).is_absolute() and ".." not in Path(f.dest).parts
