"""The fuzz targets' differential checks (fuzz/targets.py) on the regression corpus and on the real-data seeds.

Level 1: pure functions. Every input that ever made a C entry point crash or disagree with its Python twin is kept
in tests/fuzz_corpus/<target>/ and replayed here on whatever build is installed (the sanitized one under
`make sanitize`); the seeds `make fuzz` starts from (cut from data/sample's Wikipedia excerpt) must pass too. The
coverage-guided runs themselves are `make fuzz` (minutes per target) and the short one `make test` starts with.
"""

from pathlib import Path

import pytest

from fuzz import run, targets
from pipeline.match import stage as match
from pipeline.queries import wikicore
from tests import native

CORPUS = Path(__file__).parent / "fuzz_corpus"
NATIVE = {"wikicore": (wikicore._wikicore, "pipeline._wikicore"), "check_rows": (match._matchcore, "pipeline._matchcore"),
          "hit_columns": (match._matchcore, "pipeline._matchcore")}


def skip_unless_built(target: str) -> None:
    module, name = NATIVE[target]
    if module is None and not native.REQUIRED:
        pytest.skip(native.not_built_reason(name))


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_regression_corpus(target):
    skip_unless_built(target)
    for path in sorted((CORPUS / target).glob("*")):
        targets.TARGETS[target](path.read_bytes())


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_seeds_from_the_sample_data_agree(target, tmp_path):
    skip_unless_built(target)
    n = run.write_seeds(target, tmp_path)
    assert n >= 20
    for path in sorted(tmp_path.iterdir()):
        targets.TARGETS[target](path.read_bytes())


def test_checks_catch_a_disagreement(monkeypatch):
    # The checks are only worth their runs if a twin that differs fails them: break the Python twins on purpose.
    skip_unless_built("check_rows")
    seed = b"\x00\x03\x01\x00http://a/1.jpg\x00a dog , a cat"
    targets.check_rows_check(seed)
    monkeypatch.setattr(match, "check_rows_py", lambda *a: ([], [], [], [], []))
    with pytest.raises(AssertionError):
        targets.check_rows_check(seed)
    monkeypatch.setattr(wikicore.PySplitCounter, "add_page", lambda self, text: -1)
    with pytest.raises(AssertionError):
        targets.wikicore_check(b"\x01a page")


def test_decoding_is_deterministic_and_total():
    # Any bytes decode to arguments (no exception before the C is called), and the same bytes to the same ones.
    for data in (b"", b"\x00", b"\xff" * 9, b"\x01\x02\x03\x04\x01N\x00\x01B\x00\xed\xa0\x80x", bytes(range(256))):
        assert targets.check_rows_args(data) == targets.check_rows_args(data)
        assert targets.hit_columns_args(data) == targets.hit_columns_args(data)
    urls, captions, reasons, *_ = targets.check_rows_args(b"\x01\x02\x03\x01\x01N\x00\x01B\x00\xed\xa0\x80x\x00cap")
    assert urls == [None, "\udced\udca0\udc80x"] and captions == [b"bytes", "cap"] and len(reasons) == 2
