"""pipeline.common.files: every spec kind, locally and through fsspec's memory:// filesystem, and the errors."""

import os
import uuid

import fsspec
import pytest

from pipeline.common import files
from pipeline.common.files import NoFilesError, atomic_write, expand, find


@pytest.fixture
def local(tmp_path):
    """A folder with three shards, a stats file, a sub-folder (with a shard that must not be listed) and a dump."""
    for name in ("00000.tar", "00001.tar", "00002.tar", "00000_stats.json", "sub/00009.tar", "other/a.xml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(name.encode())
    return tmp_path


@pytest.fixture
def memory():
    """The same tree on fsspec's in-memory filesystem, under a fresh root; removed afterwards."""
    fs = fsspec.filesystem("memory")
    root = f"/t{uuid.uuid4().hex}"
    for name in ("00000.tar", "00001.tar", "00002.tar", "00000_stats.json", "sub/00009.tar", "other/a.xml"):
        fs.pipe(f"{root}/{name}", name.encode())
    yield f"memory://{root}"
    fs.rm(root, recursive=True)


def test_local_spec_kinds(local):
    tars = [str(local / f"0000{i}.tar") for i in range(3)]
    assert expand(str(local), ".tar") == tars                       # a folder: its *.tar, not sub-folders
    assert expand(f"{local}/", ".tar") == tars
    assert expand(str(local / "*.tar")) == tars                     # a glob
    assert expand(str(local / "0000[12].tar")) == tars[1:]
    assert expand(str(local / "{00002,00000}.tar")) == [tars[0], tars[2]]   # a brace list, sorted
    assert expand(str(local / "{00000..00002}.tar")) == tars        # a brace range
    assert expand(str(local / "{sub,other}/*")) == [str(local / "other/a.xml"), str(local / "sub/00009.tar")]
    assert expand([tars[2], tars[0], tars[2]]) == [tars[0], tars[2]]          # a list, de-duplicated
    assert expand(f"{tars[1]}::{tars[0]}") == tars[:2]              # webdataset's '::' separator
    assert expand(tars[1]) == [tars[1]]                             # one file
    assert expand(str(local), (".json", ".tar")) == tars[:1] + [str(local / "00000_stats.json")] + tars[1:]


def test_one_named_file_keeps_its_spelling(local, monkeypatch):
    monkeypatch.chdir(local)
    assert expand("00001.tar") == ["00001.tar"]
    assert expand("other/a.xml") == ["other/a.xml"]


def test_streams_are_expanded_not_listed():
    assert expand("pipe:cat /x/{0..2}.tar") == ["pipe:cat /x/0.tar", "pipe:cat /x/1.tar", "pipe:cat /x/2.tar"]
    assert expand("http://127.0.0.1:1/s/{00..01}.tar") == ["http://127.0.0.1:1/s/00.tar", "http://127.0.0.1:1/s/01.tar"]


def test_memory_spec_kinds(memory):
    tars = [f"{memory}/0000{i}.tar" for i in range(3)]
    assert expand(memory, ".tar") == tars
    assert expand(f"{memory}/*.tar") == tars
    assert expand(f"{memory}/0000[12].tar") == tars[1:]
    assert expand(f"{memory}/{{00000..00002}}.tar") == tars
    assert expand(f"{memory}/{{sub,other}}/*") == [f"{memory}/other/a.xml", f"{memory}/sub/00009.tar"]
    assert expand([tars[1], tars[0]]) == tars[:2]
    assert expand(tars[2]) == [tars[2]]
    with files.open_file(expand(f"{memory}/other/*.xml")[0], "rb") as f:
        assert f.read() == b"other/a.xml"


@pytest.mark.parametrize("where", ["local", "memory"])
def test_nothing_matches_is_one_clear_error(where, local, memory):
    root = str(local) if where == "local" else memory
    with pytest.raises(NoFilesError, match=r"no file matches '.*/nothing-\*\.parquet'$"):
        expand(f"{root}/nothing-*.parquet")
    with pytest.raises(NoFilesError, match=r"no file matches '.*/missing\.tar'$"):
        expand(f"{root}/missing.tar")
    with pytest.raises(NoFilesError, match=r"no file matches '.*/other' \(in a folder: its \*\.tar files\)"):
        expand(f"{root}/other", ".tar")
    # a brace pattern naming a missing shard is an error, not a shorter list
    with pytest.raises(NoFilesError, match=r"no file matches '.*/00003\.tar' \(and 1 more\)"):
        expand(f"{root}/{{00000..00004}}.tar")
    # each item of a list must name something: a mistyped second input is not silently dropped
    with pytest.raises(NoFilesError, match="no file matches '.*/typo'"):
        expand([f"{root}/00000.tar", f"{root}/typo"])
    assert find(f"{root}/nothing-*.parquet") == []   # find: for a stage's own outputs, nothing is fine


def test_unlistable_spec_is_one_line():
    with pytest.raises(NoFilesError, match="cannot list"):
        expand("nosuchprotocol://bucket/x.tar")


@pytest.mark.parametrize("where", ["local", "memory"])
def test_atomic_write_replaces_whole_or_not_at_all(where, local, memory):
    path = f"{local if where == 'local' else memory}/out.txt"
    with atomic_write(path, "wb") as f:
        f.write(b"first")
    with atomic_write(path, "wb") as f:
        f.write(b"second")
    with pytest.raises(RuntimeError):
        with atomic_write(path, "wb") as f:
            f.write(b"half")
            raise RuntimeError("writer died")
    with files.open_file(path, "rb") as f:
        got = f.read()
    assert got == b"second"   # the interrupted write left the old file
    assert sorted(p.name for p in local.iterdir() if "out" in p.name) == (["out.txt"] if where == "local" else [])
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write("tr\u00e8s")
    with files.open_file(path, "rb") as f:
        assert f.read() == "tr\u00e8s".encode()


def test_makedirs_exists_remove(local, memory):
    for root in (str(local), memory):
        files.makedirs(f"{root}/new/deeper")
        assert files.exists(f"{root}/00000.tar") and not files.exists(f"{root}/nope")
        files.remove(expand(f"{root}/0000[01].tar"))
        assert expand(root, ".tar") == [f"{root}/00002.tar"]


def test_named_files_unchecked_for_the_trainer(local):
    # The trainer skips and counts a shard it cannot read, so it takes named shards as written...
    named = f"{local}/{{00000..00003}}.tar"
    assert expand(named, ".tar", check_named=False) == [str(local / f"0000{i}.tar") for i in range(4)]
    with pytest.raises(NoFilesError, match="00003.tar"):
        expand(named, ".tar")
    # ...but folders and globs are still listed, and one that names nothing is still an error.
    assert expand(str(local), ".tar", check_named=False) == [str(local / f"0000{i}.tar") for i in range(3)]
    with pytest.raises(NoFilesError, match="no file matches"):
        expand(f"{local}/none-*.tar", ".tar", check_named=False)


def test_join_puts_one_slash_between_parts_for_paths_and_urls():
    assert files.join("s3://bucket/run/", "manifest.json") == "s3://bucket/run/manifest.json"
    assert files.join("s3://bucket/run", "examples", "a.png") == "s3://bucket/run/examples/a.png"
    assert files.join("/tmp/out", "part-*.parquet") == "/tmp/out/part-*.parquet"


def test_parent_name_and_folder_name_of_paths_and_urls(tmp_path, monkeypatch):
    assert files.parent("s3://bucket/run/ckpt.pt") == "s3://bucket/run"
    assert files.parent("s3://bucket/run/") == "s3://bucket" and files.parent("s3://bucket") == "s3://bucket"
    assert files.parent("run/ckpt.pt") == "run" and files.parent("ckpt.pt") == "." and files.parent("/a") == "/"
    assert files.name("s3://bucket/run/ckpt.pt") == "ckpt.pt" and files.name("runs/x/") == "x"
    assert files.folder_name("s3://bucket/run/ckpt.pt") == "run"
    monkeypatch.chdir(tmp_path)
    assert files.folder_name("ckpt.pt") == tmp_path.name   # a bare file name: the current folder's


def test_entries_isdir_isfile_and_version(local, memory):
    for root in (str(local), memory):
        assert files.entries(root) == (["other", "sub"], ["00000.tar", "00000_stats.json", "00001.tar", "00002.tar"])
        assert files.isdir(f"{root}/sub") and not files.isdir(f"{root}/00000.tar")
        assert files.isfile(f"{root}/00000.tar") and not files.isfile(f"{root}/sub")
        before = files.version(f"{root}/00000.tar")
        assert before.startswith("9\x1f")   # the size leads: b"00000.tar" is 9 bytes
        with atomic_write(f"{root}/00000.tar") as f:
            f.write(b"other bytes")
        assert files.version(f"{root}/00000.tar") != before


def test_filesystem_and_compression(local, memory, monkeypatch):
    # the filesystem and its own path, for what the other functions do not cover (ranged reads, listings)
    for root in (str(local), memory):
        fs, path = files.filesystem(f"{root}/00000.tar")
        assert fs.cat_file(path, start=2, end=5) == b"000" and files.size(f"{root}/00000.tar") == 9
    assert files.filesystem(f"{memory}/sub/00009.tar")[1] == f"{memory.removeprefix('memory://')}/sub/00009.tar"
    monkeypatch.chdir(local)
    assert files.filesystem("sub/00009.tar")[1] == f"{local}/sub/00009.tar"   # local paths come back absolute
    assert files.compression("q.tsv.gz") == "gzip" and files.compression("s3://b/d.xml.bz2") == "bz2"
    assert files.compression("q.tsv") is None and files.compression("pool.parquet") is None


def test_atomic_write_creates_missing_local_folders(tmp_path):
    # memory://, S3, GCS have no folders to create; locally the temp sibling needs its folder to exist
    path = tmp_path / "a" / "b" / "report.json"
    with files.atomic_write(str(path), "w") as f:
        f.write("{}")
    assert path.read_text() == "{}"
    assert os.listdir(path.parent) == ["report.json"]


@pytest.mark.parametrize("where", ["local", "memory"])
def test_write_text_writes_utf8_whole_and_replaces(tmp_path, where):
    path = str(tmp_path / "sub" / "r.md") if where == "local" else f"memory://wt-{uuid.uuid4().hex}/r.md"
    files.write_text(path, "old\n")
    files.write_text(path, "Zürich – 東京\n")
    with files.open_file(path, "rb") as f:
        assert f.read() == "Zürich – 東京\n".encode("utf-8")
