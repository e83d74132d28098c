"""The `manifest.json` every stage writes beside its output.

A manifest records what was run (resolved settings, code version), on what (input paths with sizes and
sha256), what came out (counters: read, kept, rejected by reason) and how long it took. `check_accounting`
enforces the rule that nothing is lost silently: read == kept + sum(rejected).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any, Iterable


from pipeline import __version__
from pipeline.common import files


def code_version() -> str:
    """Package version plus the git commit when run from a checkout ('0.1.0+g1a2b3c4', '-dirty' if edited)."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=10"], cwd=here,
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{rev}" if rev else __version__


def file_info(path: str, checksum: bool = True) -> dict[str, Any]:
    """Size and sha256 of a local or fsspec path, streamed in 8 MiB blocks (bounded memory); without the checksum,
    the size alone (one metadata call: a shard on an object store is not downloaded to be counted)."""
    if not checksum:
        return {"path": path, "bytes": files.size(path)}
    with files.open_file(path, "rb") as f:
        digest = hashlib.sha256()
        size = 0
        while block := f.read(8 << 20):
            size += len(block)
            digest.update(block)
    return {"path": path, "bytes": size, "sha256": digest.hexdigest()}


class AccountingError(AssertionError):
    """A stage's counters do not add up: some input was lost without a reason."""


def check_accounting(counters: dict[str, Any]) -> None:
    """Raise AccountingError unless counters['read'] == counters['kept'] + sum(counters['rejected'].values())."""
    read, kept = counters["read"], counters["kept"]
    rejected = sum(counters.get("rejected", {}).values())
    if read != kept + rejected:
        raise AccountingError(f"read {read} != kept {kept} + rejected {rejected}: input lost silently")


def write_json_atomic(path: str, payload: Any) -> None:
    """Write JSON to path atomically (files.atomic_write), so readers never see half a file."""
    with files.atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=False, ensure_ascii=False)
        f.write("\n")


def write_manifest(out_dir: str, *, stage: str, settings: dict[str, Any], inputs: Iterable[dict[str, Any]],
                   counters: dict[str, Any], wall_time_s: float, extra: dict[str, Any] | None = None) -> dict:
    """Check the counters add up, then write `<out_dir>/manifest.json` and return its content."""
    check_accounting(counters)
    manifest = {
        "stage": stage,
        "code_version": code_version(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "wall_time_s": round(wall_time_s, 3),
        "settings": settings,
        "inputs": list(inputs),
        "counters": counters,
        **(extra or {}),
    }
    write_json_atomic(files.join(out_dir, "manifest.json"), manifest)
    return manifest
