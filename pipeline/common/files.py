"""Turning a path into files, local or through fsspec."""

from __future__ import annotations

import fsspec
import fsspec.implementations.local


def qualified(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path from fs.glob made openable again: remote ones get their protocol back ('s3://...')."""
    return path if isinstance(fs, fsspec.implementations.local.LocalFileSystem) else fs.unstrip_protocol(path)


def expand_files(pattern: str, suffix: str) -> list[str]:
    """Files named by a glob, or the `*<suffix>` files of a folder (local or fsspec), sorted."""
    fs, path = fsspec.core.url_to_fs(pattern)
    paths = fs.glob(path.rstrip("/") + f"/*{suffix}") if fs.isdir(path) else fs.glob(path)
    return [qualified(fs, p) for p in sorted(paths)]
