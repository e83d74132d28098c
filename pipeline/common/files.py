"""The one door to files: a spec becomes a sorted file list; files open for reading or writing through fsspec.

A spec is one file, a folder (its files ending in the caller's suffix, not recursive), a glob (`*`, `?`, `[`),
a brace pattern (`{00000..00099}`, `{a,b}`; expanded first, so `{a,b}/*.tar` works), or several of these in a
list or joined by `::` (webdataset's separator). Any of them may be an fsspec URL (`s3://`, `gs://`,
`memory://`...). `pipe:` commands and http(s) URLs are streams, not listable: their brace patterns are expanded
and kept as written. Every stage, the trainer, the eval-set readers and the benchmarks list their inputs here,
so a spec that works for one works for all; nothing else globs or brace-expands. Nothing else in `pipeline/` or
`train/` imports fsspec either (tests/test_layout.py): what a module needs beyond these functions (ranged reads,
detailed listings) it does on `filesystem(path)`.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from collections.abc import Iterable, Iterator

import braceexpand
import fsspec
import fsspec.implementations.local
import fsspec.utils

GLOB_CHARS = "*?["
STREAM_PREFIXES = ("pipe:", "http://", "https://")


class NoFilesError(ValueError):
    """A spec that names no file: one line naming the spec."""


def qualified(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path from fs.glob made openable again: remote ones get their protocol back ('s3://...')."""
    return path if isinstance(fs, fsspec.implementations.local.LocalFileSystem) else fs.unstrip_protocol(path)


def _parts(spec: str | Iterable[str]) -> list[str]:
    """A spec's single specs: list items and `::`-separated parts, each brace-expanded."""
    items = spec.split("::") if isinstance(spec, str) else list(spec)
    return [p for item in items if item for p in braceexpand.braceexpand(item)]


def _files_of(part: str, suffixes: tuple[str, ...], check_named: bool) -> list[str] | None:
    """The files one expanded part names; None when it names one file that does not exist."""
    if part.startswith(STREAM_PREFIXES):
        return [part]
    if not check_named and any(suffixes) and part.endswith(suffixes) and not any(c in part for c in GLOB_CHARS):
        return [part]   # taken as named: no filesystem call (10,000 brace-named shards on S3 are not 10,000 HEADs)
    fs, path = filesystem(part)
    if any(c in path for c in GLOB_CHARS):
        found = [p for p in fs.glob(path) if fs.isfile(p)]
    elif fs.isdir(path):
        found = [p for p in fs.ls(path, detail=False) if p.endswith(suffixes) and fs.isfile(p)]
    else:
        return [part] if fs.isfile(path) else None   # one named file stays as written (relative stays relative)
    return [qualified(fs, p) for p in found]


def _listing(spec: str | Iterable[str], suffixes: tuple[str, ...],
             check_named: bool = True) -> tuple[list[str], list[str]]:
    """(files, parts that name a missing file) of a spec."""
    files: set[str] = set()
    missing: list[str] = []
    try:
        for part in _parts(spec):
            found = _files_of(part, suffixes, check_named)
            if found is None:
                missing.append(part)
            else:
                files.update(found)
    except (OSError, ValueError) as e:   # an unreachable store or a malformed URL: one line, not a traceback
        raise NoFilesError(f"cannot list {spec!r}: {e}") from None
    return sorted(files), missing


def _suffixes(suffix: str | tuple[str, ...]) -> tuple[str, ...]:
    return (suffix,) if isinstance(suffix, str) else tuple(suffix)


def find(spec: str | Iterable[str], suffix: str | tuple[str, ...] = "") -> list[str]:
    """The files a spec names, sorted and de-duplicated; [] when there are none (for a stage's own outputs)."""
    return _listing(spec, _suffixes(suffix))[0]


def expand(spec: str | Iterable[str], suffix: str | tuple[str, ...] = "", *, check_named: bool = True) -> list[str]:
    """The files a spec names, sorted and de-duplicated (inputs).

    NoFilesError when any item of the spec (a list element) names nothing, or when a file it names
    explicitly (directly or through a brace pattern) does not exist: an input is never dropped silently.
    `check_named=False` (the trainer, which skips and counts a shard that cannot be read) keeps the files
    named with the suffix as written, unchecked, without a filesystem call each.
    """
    suffixes = _suffixes(suffix)
    files: set[str] = set()
    for item in [spec] if isinstance(spec, str) else list(spec):
        found, missing = _listing(item, suffixes, check_named)
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise NoFilesError(f"no file matches {missing[0]!r}{more}")
        if not found:
            folders = f" (in a folder: its *{'|*'.join(suffixes)} files)" if any(suffixes) else ""
            raise NoFilesError(f"no file matches {item!r}{folders}")
        files.update(found)
    return sorted(files)


def join(folder: str, *names: str) -> str:
    """`folder/name/...` for a local folder or a URL (`s3://bucket/x`): '/' as the separator, one per join."""
    return "/".join([folder.rstrip("/"), *names])


def parent(path: str) -> str:
    """The folder of a file path or URL: `s3://bucket/run/ckpt.pt` -> `s3://bucket/run`, `run/ckpt.pt` -> `run`,
    `ckpt.pt` -> `.`."""
    if "://" not in path:
        return os.path.dirname(path.rstrip("/")) or "."
    protocol, rest = path.split("://", 1)
    head = rest.rstrip("/").rpartition("/")[0]
    return f"{protocol}://{head}" if head else path   # a bucket is its own folder


def folder_name(path: str) -> str:
    """The name of the folder holding a file (a local path resolved first: `ckpt.pt` names the current folder)."""
    return os.path.basename(os.path.dirname(os.path.abspath(path))) if "://" not in path else name(parent(path))


def name(path: str) -> str:
    """The last part of a file path or URL (`s3://bucket/run/ckpt.pt` -> `ckpt.pt`)."""
    return path.rstrip("/").rpartition("/")[2]


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path within it) of a path or URL, for what the functions here do not cover (ranged reads,
    listings with details): `s3://bucket/x` -> (the S3 filesystem, `bucket/x`); a local path comes back absolute."""
    return fsspec.core.url_to_fs(path)


def compression(path: str) -> str | None:
    """The compression `open_file(path, compression="infer")` decompresses, by suffix (`gzip` for `.gz`...);
    None for a plain file."""
    return fsspec.utils.infer_compression(path)


def isdir(path: str) -> bool:
    """A folder (on object stores: a prefix that holds objects)."""
    fs, p = filesystem(path)
    return fs.isdir(p)


def entries(folder: str) -> tuple[list[str], list[str]]:
    """(names of the sub-folders, names of the files) directly in a folder, each sorted."""
    fs, p = filesystem(folder)
    found = fs.ls(p, detail=True)
    return (sorted(name(e["name"]) for e in found if e["type"] == "directory"),
            sorted(name(e["name"]) for e in found if e["type"] != "directory"))


def version(path: str) -> str:
    """What changes when a file does: its size and modification time (an object's last-modified time)."""
    fs, p = filesystem(path)
    info = fs.info(p)
    mtime = info.get("mtime") or info.get("LastModified") or info.get("updated") or info.get("last_modified") or ""
    return f"{info.get('size')}\x1f{mtime}"


def isfile(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.isfile(p)


def exists(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.exists(p)


def size(path: str) -> int:
    """Bytes of a file."""
    fs, p = filesystem(path)
    return fs.size(p)


def makedirs(path: str) -> None:
    """Create a folder and its parents (object stores have no folders: a no-op there)."""
    fs, p = filesystem(path)
    fs.makedirs(p, exist_ok=True)


def remove(paths: list[str]) -> None:
    """Delete files (of one filesystem: one batched call on object stores)."""
    if paths:
        fs, _ = filesystem(paths[0])
        fs.rm([filesystem(p)[1] for p in paths])


def open_file(path: str, mode: str = "rb", **kwargs):
    """An fsspec file object (`compression="infer"` opens .gz/.bz2/.xz/.zst by suffix)."""
    return fsspec.open(path, mode, **kwargs).open()


# Object stores whose fsspec files, opened with autocommit=False, upload as they are written but make the object
# visible only on commit() (a multipart or resumable upload completed then; discard() aborts it): s3fs, gcsfs, adlfs.
STREAMED_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az"}


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    return {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb", **kwargs) -> Iterator:
    """Write `path` so that readers see the old file or the whole new one, never a part; a failed write
    leaves the old file. For every file a stage or the trainer writes whole: reports, manifests, checkpoints,
    shards (S3 and GCS have no rename, and need none: an object appears when its upload completes).

    Locally: write a hidden sibling, fsync it, then rename it over the file (atomic on POSIX, durable).
    On S3, GCS and Azure: stream through an upload that is committed at the end (one PUT, or a multipart
    upload completed) and aborted on an error, so memory stays one block whatever the size. Any other
    fsspec filesystem: the bytes are collected and put in one call at the end.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode {mode!r} (expected 'w' or 'wb')")
    fs, p = filesystem(path)
    if isinstance(fs, fsspec.implementations.local.LocalFileSystem):
        folder, name = os.path.split(p)
        tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
        os.makedirs(folder or ".", exist_ok=True)   # as on object stores, where a key needs no folder
        try:
            with open(tmp, mode, **kwargs) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())   # the bytes on disk before the name points at them: a crash leaves old or new
            os.replace(tmp, p)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    if _protocols(fs) & STREAMED_PROTOCOLS:
        raw = fs.open(p, "wb", autocommit=False)
        text = io.TextIOWrapper(raw, **kwargs) if mode == "w" else None
        try:
            yield text if text is not None else raw
            if text is not None:
                text.flush()
            raw.close()          # uploads the last part; nothing is visible yet
            raw.commit()
        except BaseException:
            raw.discard()        # aborts the upload: the old object stays
            raw.closed = True    # a discarded file must not upload what it holds when it is collected
            raise
        return
    buffer = io.BytesIO()
    text = io.TextIOWrapper(buffer, **kwargs) if mode == "w" else None
    yield text if text is not None else buffer
    if text is not None:
        text.flush()
    fs.pipe_file(p, buffer.getvalue())


def write_text(path: str, text: str) -> None:
    """A text file (UTF-8) written whole or not at all (`atomic_write`): reports, configs, JSON."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
