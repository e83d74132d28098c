"""Object storage for real: the stages read and write `s3://` on an S3 API served by moto on 127.0.0.1
(ephemeral port), and their outputs equal a local run's.

Covered so far: queries -> match -> balance (Beam stages: fsspec outside the pipeline, Beam's S3 filesystem
inside, configured by the `--s3_*` pipeline options). Not yet: shards, dedup, stats, train, zeroshot,
overlap on `s3://` (README, "Running on a cluster").
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest

from tests.test_cluster_beam import ARTICLES, FNAPI, output_files   # the same small corpus and pool
from tests.test_train_loss import free_port
from tests.wikidumps import write_dump

pytestmark = pytest.mark.slow

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 API on 127.0.0.1 and an empty bucket; yields (endpoint URL, fsspec filesystem).

    moto's server runs as its own process (not a thread of the test), so that other processes (Beam and
    img2dataset workers) reach it as they would a real S3-compatible store.
    """
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mp = pytest.MonkeyPatch()
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                assert server.poll() is None, "moto.server exited"
                time.sleep(0.1)
        else:
            pytest.fail(f"moto.server did not listen on {endpoint} within 30 s")
        for key, value in CREDENTIALS.items():
            mp.setenv(key, value)
        mp.setenv("FSSPEC_S3_ENDPOINT_URL", endpoint)   # fsspec's s3:// (s3fs) reads its endpoint from here
        fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = endpoint
        fs = fsspec.filesystem("s3", endpoint_url=endpoint, skip_instance_cache=True)
        fs.mkdir("witbuild")
        yield endpoint, fs
    finally:
        fsspec.config.conf.get("s3", {}).pop("endpoint_url", None)
        mp.undo()
        server.terminate()
        server.wait(timeout=30)


def beam_s3_options(endpoint: str) -> list[str]:
    return [f"--s3_endpoint_url={endpoint}", "--s3_access_key_id=test", "--s3_secret_access_key=test",
            "--s3_region_name=us-east-1"]


def run_beam_chain(dump: str, pool: str, out: str, beam_args: list[str]) -> dict:
    from pipeline import balance
    from pipeline.match import stage as match
    from pipeline.queries import stage as queries

    return {
        "queries": queries.run(["--dump", dump, "--out", f"{out}/queries", "--min-unigram-count", "3",
                                "--min-bigram-count", "2", "--min-pmi", "1", "--no-checksums", *beam_args]),
        "matched": match.run(["--pool", pool, "--url-col", "URL", "--caption-col", "TEXT", "--queries",
                              f"{out}/queries/queries.tsv", "--out", f"{out}/matched", "--buckets", "3", *beam_args]),
        "balanced": balance.run(["--matched", f"{out}/matched", "--out", f"{out}/balanced", "--t", "4",
                                 "--rows-per-file", "10", *beam_args]),
    }


def test_beam_stages_on_s3_equal_the_local_run(s3, tmp_path):
    endpoint, fs = s3
    import pyarrow as pa

    from tests.test_cluster_beam import TOPICS
    write_dump(tmp_path / "dump.xml.bz2", ARTICLES)
    captions = [f"a photo of the {t} by the {TOPICS[(i * 5) % len(TOPICS)]} number {i}"
                for i, t in enumerate(TOPICS * 8)] + ["zzz qqq", None]
    urls = [f"http://img.example.com/{i % 40}.jpg" for i in range(len(captions))]
    pq.write_table(pa.table({"URL": urls, "TEXT": captions}), tmp_path / "pool.parquet", row_group_size=10)
    fs.put(str(tmp_path / "dump.xml.bz2"), "witbuild/in/dump.xml.bz2")
    fs.put(str(tmp_path / "pool.parquet"), "witbuild/in/pool.parquet")

    local = run_beam_chain(str(tmp_path / "dump.xml.bz2"), str(tmp_path / "pool.parquet"), str(tmp_path / "local"), FNAPI)
    remote = run_beam_chain("s3://witbuild/in/dump.xml.bz2", "s3://witbuild/in/pool.parquet", "s3://witbuild/out",
                            FNAPI + beam_s3_options(endpoint))
    for stage in local:
        assert remote[stage]["counters"] == local[stage]["counters"], stage
    fs.get("witbuild/out/", str(tmp_path / "remote"), recursive=True)
    want, got = output_files(tmp_path / "local"), output_files(tmp_path / "remote")
    assert sorted(got) == sorted(want)
    for name in want:
        if "/rejected/" not in name:
            assert got[name] == want[name], name

    def rejected(folder: Path) -> list:
        """Rejected rows name their source (a local path or an s3:// URL), which also picks their part file."""
        rows = [r for f in sorted(folder.glob("*/rejected/*.parquet")) for r in pq.read_table(f).to_pylist()]
        return sorted((str(sorted(dict(r, source=r.get("source", "").rsplit("/", 1)[-1]).items())) for r in rows))

    assert rejected(tmp_path / "remote") == rejected(tmp_path / "local") and rejected(tmp_path / "local")
