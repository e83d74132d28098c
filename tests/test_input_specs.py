"""Every stage that takes several input files, run from its entry point with the input given as a folder, a glob
and a brace pattern (pipeline.common.files lists them all). Each spec names a known subset, and the stage's
manifest/report says it read exactly that subset."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import stats
from pipeline.dedup import stage as dedup
from pipeline.match import stage as match
from pipeline.queries import stage as queries
from pipeline.shards import stage as shards
from tests.evalfixtures import make_planted
from tests.test_stats import write_shard
from tests.wikidumps import write_dump
from train import train
from demo.synthetic import write_shards

BEAM = ["--runner=FnApiRunner"]
pytestmark = pytest.mark.slow   # every test runs a stage end to end


def specs(folder, glob: str, brace: str) -> list[tuple[str, str]]:
    """(kind, spec) for a folder (all its files), a glob and a brace pattern (each naming files of `folder`)."""
    return [("folder", str(folder)), ("glob", f"{folder}/{glob}"), ("brace", f"{folder}/{brace}")]


def test_queries_dumps(tmp_path):
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    for i, word in enumerate(["zebra", "okapi", "quagga"]):
        write_dump(dumps / f"part-{i}.xml.bz2", [{"title": word.title(), "text": f"The {word} runs. The {word} eats."}])
    (dumps / "part-0-multistream-index.txt.bz2").write_bytes(b"")   # a folder lists dumps, not their indexes
    expected = {"folder": 3, "glob": 2, "brace": 2}
    for kind, spec in specs(dumps, "part-[01].xml.bz2", "part-{0,2}.xml.bz2"):
        m = queries.run(["--dump", spec, "--out", str(tmp_path / kind), "--min-unigram-count", "1",
                         "--min-bigram-count", "1", "--no-checksums", *BEAM])
        assert len(m["inputs"]) == expected[kind] and m["counters"]["read"] == expected[kind], kind


def test_match_pool(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(3):
        pq.write_table(pa.table({"url": [f"http://img.example.com/{i}-{j}.jpg" for j in range(i + 1)],
                                 "caption": ["a dog in the park"] * (i + 1)}), pool / f"p{i}.parquet")
    (tmp_path / "q.tsv").write_text("query_id\tquery\tsource\tcount\tpmi\n0\tdog\tunigram\t100\t\n")
    expected = {"folder": 1 + 2 + 3, "glob": 1 + 2, "brace": 1 + 3}
    for kind, spec in specs(pool, "p[01].parquet", "p{0,2}.parquet"):
        m = match.run(["--pool", spec, "--queries", str(tmp_path / "q.tsv"), "--out", str(tmp_path / kind),
                       "--no-language-filter", *BEAM])
        assert m["counters"]["read"] == expected[kind] == m["counters"]["kept"], kind


def test_shards_input(tmp_path):
    balanced = tmp_path / "balanced"
    balanced.mkdir()
    for i in range(3):   # non-http URLs: refused before any download, so nothing leaves the process
        pq.write_table(pa.table({"uid": [f"u{i}-{j}" for j in range(i + 1)],
                                 "url": [f"ftp://example.com/{i}-{j}.jpg" for j in range(i + 1)],
                                 "caption": ["c"] * (i + 1), "query_ids": [[0]] * (i + 1)}),
                       balanced / f"part-{i}.parquet")
    expected = {"folder": 6, "glob": 3, "brace": 4}
    for kind, spec in specs(balanced, "part-[01].parquet", "part-{0,2}.parquet"):
        m = shards.run(["--input", spec, "--out", str(tmp_path / kind), "--processes", "1", "--threads", "1"])
        assert m["counters"]["read"] == expected[kind] and m["counters"]["kept"] == 0, kind
        assert len(m["inputs"]) == {"folder": 3}.get(kind, 2)


def test_stats_shards(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    for i in range(3):
        write_shard(folder / f"{i:05d}.tar", 10 * i, i + 1)
    expected = {"folder": (3, 6), "glob": (2, 3), "brace": (2, 4)}
    for kind, spec in specs(folder, "0000[01].tar", "{00000,00002}.tar"):
        report = stats.run(["--shards", spec, "--out", str(tmp_path / kind)])
        assert (report["shards"]["read"], report["samples"]) == expected[kind], kind


def test_dedup_shards(tmp_path):
    eval_root, shard_dir = make_planted(tmp_path)   # 00000.tar: 11 samples, 00001.tar: 11
    runs = {}
    for kind, spec in specs(shard_dir, "0000[0].tar", "{00000..00001}.tar"):
        runs[kind] = dedup.run(["--shards", spec, "--eval", f"pets={eval_root}", "--out", str(tmp_path / kind),
                                "--out-shards", str(tmp_path / f"{kind}-shards"), "--workers", "1"])["counters"]
    assert runs["folder"] == runs["brace"] and runs["folder"]["read"] == 22
    assert runs["glob"]["read"] == 11


@pytest.fixture
def shape_shards(tmp_path):
    write_shards(tmp_path / "shapes", "shapes", shards=3, per_shard=16, image_size=32, seed=1)
    return tmp_path / "shapes"


@pytest.mark.parametrize("kind, spec, n", [("folder", "", 3), ("glob", "/0000[01].tar", 2),
                                           ("brace", "/{00000,00002}.tar", 2)])
def test_train_shards(shape_shards, tmp_path, caplog, kind, spec, n):
    from tests.test_train_loop import FAST
    with caplog.at_level(logging.INFO, logger="train.train"):
        train.main(["--shards", f"{shape_shards}{spec}", "--out", str(tmp_path / kind), "--steps", "1",
                    "--batch-size", "8", *FAST])
    assert f"{n} shards," in caplog.text
