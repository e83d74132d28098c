"""The package layout's dependency rules (README, "Layout"): no stage imports another stage, `pipeline.common`
imports no stage, `train` imports only `pipeline.common`, nothing in the product imports the demo, and only
`pipeline/common/files.py` (the one door to files) imports fsspec or an fsspec filesystem package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STAGES = {"queries", "match", "balance", "shards", "stats", "dedup", "overlap"}
FILES_DOOR = REPO / "pipeline" / "common" / "files.py"
FILESYSTEM_PACKAGES = {"fsspec", "s3fs", "gcsfs", "adlfs"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (`from pipeline import match` counts as pipeline.match)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def owner(path: Path) -> str:
    """'common', a stage name, 'train' or 'demo': the part of the product a file belongs to."""
    parts = path.relative_to(REPO).parts
    if parts[0] != "pipeline":
        return parts[0]
    return parts[1] if len(parts) > 2 else parts[1].removesuffix(".py")


def stages_imported(path: Path) -> set[str]:
    return {m.split(".")[1] for m in imported_modules(path) if m.startswith("pipeline.")} & STAGES


def filesystem_packages_imported(path: Path) -> set[str]:
    """The fsspec packages a file imports (`from fsspec.utils import x` counts as fsspec)."""
    return {m.split(".")[0] for m in imported_modules(path)} & FILESYSTEM_PACKAGES


PRODUCT = sorted(p for folder in ("pipeline", "train") for p in (REPO / folder).rglob("*.py"))


@pytest.mark.parametrize("path", PRODUCT, ids=lambda p: str(p.relative_to(REPO)))
def test_no_part_of_the_product_imports_another_stage_or_the_demo(path):
    part = owner(path)
    assert stages_imported(path) - {part} == set()
    assert not any(m == "demo" or m.startswith("demo.") for m in imported_modules(path))


def test_the_rules_see_a_cross_stage_import(tmp_path):
    # the check itself: a stats module importing shards is caught, one importing pipeline.common is not
    bad = tmp_path / "bad.py"
    bad.write_text("from pipeline import shards\nfrom pipeline.common.files import expand_files\n"
                   "def f():\n    from pipeline.dedup import phash\n")
    assert stages_imported(bad) == {"shards", "dedup"}
    assert owner(REPO / "pipeline" / "dedup" / "embed.py") == "dedup"
    assert owner(REPO / "pipeline" / "stats.py") == "stats"
    assert owner(REPO / "pipeline" / "common" / "rawtar.py") == "common"
    assert owner(REPO / "train" / "zeroshot.py") == "train"


@pytest.mark.parametrize("path", [p for p in PRODUCT if p != FILES_DOOR], ids=lambda p: str(p.relative_to(REPO)))
def test_only_the_files_module_imports_fsspec(path):
    assert filesystem_packages_imported(path) == set(), "open, list and size files through pipeline.common.files"


def test_the_rules_see_an_fsspec_import(tmp_path):
    # the check itself: each way of reaching fsspec is caught, importing pipeline.common.files is not
    bad = tmp_path / "bad.py"
    bad.write_text("import fsspec.core\nfrom fsspec.utils import infer_compression\n"
                   "def f():\n    import s3fs\n    from pipeline.common import files\n")
    assert filesystem_packages_imported(bad) == {"fsspec", "s3fs"}
    good = tmp_path / "good.py"
    good.write_text("from pipeline.common import files\nfrom pipeline.common.files import open_file\n")
    assert filesystem_packages_imported(good) == set()
    assert filesystem_packages_imported(FILES_DOOR) == {"fsspec"}   # the door itself, exempt by path
    assert FILES_DOOR in PRODUCT
