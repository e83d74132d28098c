"""The download stage on img2dataset's distributed engines: `--distributor pyspark` (a local Spark session,
local[2], bound to 127.0.0.1) and `--distributor ray` (a local Ray instance on 127.0.0.1) write the samples
`multiprocessing` writes, account for every row, and keep the address guard on their workers.

Network: only the loopback image server is contacted; Ray's usage reporting and dashboard are off.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipeline.shards import stage as shards
from demo.imageserver import ImageServer, make_jpeg
from pipeline.shards.netguard import REFUSED_ADDRESS
from pipeline.common.records import uid_of
from tests.native import without_sanitizer_preload

pytestmark = pytest.mark.slow

COMMON = ["--processes", "2", "--threads", "4", "--timeout", "2", "--samples-per-shard", "4",
          "--min-image-size", "16", "--image-size", "32"]


def write_input(path: Path, pairs: list[tuple[str, str]]) -> list[str]:
    uids = [uid_of(url, caption) for url, caption in pairs]
    pq.write_table(pa.table({"uid": uids, "url": [u for u, _ in pairs], "caption": [c for _, c in pairs],
                             "query_ids": pa.array([[i % 2] for i in range(len(pairs))], pa.list_(pa.int64()))}),
                   path)
    return uids


def read_samples(folder: Path) -> dict[str, tuple]:
    """uid -> (caption, metadata, sha256 of the image bytes), read back with webdataset."""
    tars = sorted(str(p) for p in folder.glob("*.tar"))
    return {s["__key__"]: (s["txt"].decode(), json.loads(s["json"]), hashlib.sha256(s["jpg"]).hexdigest())
            for s in wds.WebDataset(tars, shardshuffle=False, empty_check=False)}


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    """One input (10 good images, a 404, a bad scheme) and loopback URLs by name for the guard check."""
    root = tmp_path_factory.mktemp("cluster-shards")
    with ImageServer() as server:
        good = [(server.add(f"/img{i}.jpg", make_jpeg(40 + 4 * i, 36, seed=i)), f"photo {i}") for i in range(10)]
        pairs = good + [(server.url("/missing.jpg"), "not there"), ("file:///etc/passwd", "bad scheme")]
        uids = write_input(root / "in.parquet", pairs)
        # Host names pass the driver's pre-check (no look-up there); the guard refuses them in the worker.
        by_name = [(u.replace("127.0.0.1", "localhost"), f"by name {i}") for i, (u, _) in enumerate(good[:5])]
        write_input(root / "by-name.parquet", by_name)

        def run(distributor: str, name: str, allow_loopback: bool = True, source: str = "in.parquet") -> dict:
            argv = ["--input", str(root / source), "--out", str(root / name), "--distributor", distributor, *COMMON]
            return shards.run(argv + (["--allow-loopback"] if allow_loopback else []))

        reference = run("multiprocessing", "multiprocessing")
        yield {"root": root, "run": run, "reference": reference, "good_uids": set(uids[:10])}


def check_same_as_multiprocessing(downloads, distributor: str) -> None:
    root, run = downloads["root"], downloads["run"]
    manifest = run(distributor, distributor)
    reference = downloads["reference"]
    c = manifest["counters"]
    assert c == reference["counters"] == {"read": 12, "kept": 10,
                                          "rejected": {"http_status_404": 1, "bad_url": 1}}
    assert c["read"] == c["kept"] + sum(c["rejected"].values())
    samples = read_samples(root / distributor)
    assert set(samples) == downloads["good_uids"]
    assert samples == read_samples(root / "multiprocessing")
    assert sorted(p.name for p in (root / distributor).glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    # the guard holds in the workers: with loopback off, names that resolve to 127.0.0.1 are refused there
    refused = run(distributor, f"{distributor}-guard", allow_loopback=False, source="by-name.parquet")
    assert refused["counters"] == {"read": 5, "kept": 0, "rejected": {REFUSED_ADDRESS: 5}}
    assert read_samples(root / f"{distributor}-guard") == {}


@pytest.fixture
def spark(monkeypatch):
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("pyspark needs a Java runtime (java on PATH or JAVA_HOME); none here")
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)   # else Spark's Python workers run `python3` from PATH
    without_sanitizer_preload(monkeypatch)                  # the download workers run none of our C
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2]").appName("witbuild-test")
               .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.ui.enabled", "false").config("spark.driver.memory", "1g")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture
def local_ray(monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")   # no usage report leaves the machine
    without_sanitizer_preload(monkeypatch)                  # the download workers run none of our C
    import ray

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def test_pyspark_distributor_writes_the_samples_of_multiprocessing(downloads, spark):
    check_same_as_multiprocessing(downloads, "pyspark")


def test_ray_distributor_writes_the_samples_of_multiprocessing(downloads, local_ray):
    check_same_as_multiprocessing(downloads, "ray")
