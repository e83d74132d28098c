"""Beam's portable path, the protocol Dataflow, Flink and Spark runners speak: queries -> match -> balance
through a job server and separate SDK workers give the bytes FnApiRunner gives, with complete manifests.

Two ways, both started here and on loopback only:
- embedded: `--runner=PortableRunner --job_endpoint=embed --environment_type=LOOPBACK` (a job server in
  this process, SDK workers in this process);
- separate processes: `python -m apache_beam.runners.portability.local_job_service_main --port 0` plus an
  EXTERNAL worker pool on 127.0.0.1 (tests/beam_worker_pool.py), as a cluster runs them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import balance
from pipeline.match import stage as match
from pipeline.queries import stage as queries
from tests.native import wall_clock
from tests.wikidumps import write_dump

pytestmark = pytest.mark.slow

FNAPI = ["--runner=FnApiRunner"]
EMBED = ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"]

# Articles whose words repeat enough to give unigram and bigram queries at the thresholds below.
TOPICS = ["red fox", "snow leopard", "paper kite", "steam engine", "river delta", "copper kettle"]
ARTICLES = [{"title": f"{t.title()} {i}",
             "text": f"The {t} is known. A {t} lives near the {TOPICS[(i + 1) % len(TOPICS)]}. "
                     f"[[Link|the {t}]] was seen {i} times.\n{{{{cite|x}}}} Another {t}."}
            for i, t in enumerate(TOPICS * 3)] + [{"title": "Redirect", "text": "#REDIRECT [[Red Fox 0]]",
                                                    "redirect": "Red Fox 0"}]


def _wait_for_file(path: Path, proc: subprocess.Popen, what: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + wall_clock(timeout)
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not start in {timeout:.0f}s")
        time.sleep(0.2)
    return path.read_text().strip()


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def job_server(tmp_path_factory):
    """A separate Beam job server on localhost (ephemeral port) and an EXTERNAL worker pool on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("beam-services")
    # The pool starts each SDK worker as `python -c ...` from PATH: it must be this environment's python.
    env = dict(os.environ, PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    jobs = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                             "--port", "0", "--port_file", str(folder / "job.port")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pool = subprocess.Popen([sys.executable, "-m", "tests.beam_worker_pool", str(folder / "pool.port")],
                            cwd=Path(__file__).resolve().parents[1], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        job_port = _wait_for_file(folder / "job.port", jobs, "the job server")
        pool_port = _wait_for_file(folder / "pool.port", pool, "the worker pool")
        yield ["--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
               "--environment_type=EXTERNAL", f"--environment_config=127.0.0.1:{pool_port}"]
    finally:
        _stop(pool)
        _stop(jobs)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """One dump and one pool for every run (rejected/ rows name their source file, so the path is shared)."""
    folder = tmp_path_factory.mktemp("inputs")
    write_dump(folder / "dump.xml.bz2", ARTICLES)
    captions = [f"a photo of the {t} by the {TOPICS[(i * 5) % len(TOPICS)]} number {i}"
                for i, t in enumerate(TOPICS * 8)] + ["zzz qqq", None]
    urls = [f"http://img.example.com/{i % 40}.jpg" for i in range(len(captions))]   # some duplicate URLs
    pq.write_table(pa.table({"URL": urls, "TEXT": captions}), folder / "pool.parquet", row_group_size=10)
    return folder


def run_chain(inputs: Path, out: Path, beam_args: list[str]) -> dict[str, dict]:
    """queries -> match -> balance on the small corpus and pool; returns the three manifests."""
    dump = inputs / "dump.xml.bz2"
    m_queries = queries.run(["--dump", str(dump), "--out", str(out / "queries"), "--min-unigram-count", "3",
                             "--min-bigram-count", "2", "--min-pmi", "1", "--count-buckets", "4",
                             "--no-checksums", *beam_args])
    m_match = match.run(["--pool", str(inputs / "pool.parquet"), "--url-col", "URL", "--caption-col", "TEXT",
                         "--queries", str(out / "queries" / "queries.tsv"), "--out", str(out / "matched"),
                         "--buckets", "3", "--split-bytes", "100", *beam_args])
    m_balance = balance.run(["--matched", str(out / "matched"), "--out", str(out / "balanced"), "--t", "4",
                             "--rows-per-file", "10", *beam_args])
    return {"queries": m_queries, "matched": m_match, "balanced": m_balance}


def output_files(folder: Path) -> dict[str, bytes]:
    """Every output file but the manifests (times, options) and the rendered plot (matplotlib metadata)."""
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*"))
            if f.is_file() and f.name not in ("manifest.json", "entry_counts.png")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, inputs):
    """The chain's files and manifests under FnApiRunner, the default runner."""
    tmp = tmp_path_factory.mktemp("fnapi")
    manifests = run_chain(inputs, tmp / "out", FNAPI)
    return output_files(tmp / "out"), manifests


def _check_same(reference, inputs, tmp_path, beam_args):
    ref_files, ref_manifests = reference
    manifests = run_chain(inputs, tmp_path / "out", beam_args)
    files = output_files(tmp_path / "out")
    assert sorted(files) == sorted(ref_files)
    assert [n for n in files if n.startswith("matched/part-")] and [n for n in files if n.startswith("balanced/part-")]
    for name in files:
        assert files[name] == ref_files[name], name
    for stage, m in manifests.items():
        c = m["counters"]
        assert c == ref_manifests[stage]["counters"], stage
        assert c["read"] == c["kept"] + sum(c["rejected"].values()) and c["kept"] > 0, stage
    assert manifests["matched"]["counters"]["read"] == 6 * 8 + 2


def test_embedded_job_server_loopback_workers_equal_fnapi(reference, inputs, tmp_path):
    _check_same(reference, inputs, tmp_path, EMBED)


def test_separate_job_server_external_worker_pool_equal_fnapi(reference, inputs, tmp_path, job_server):
    _check_same(reference, inputs, tmp_path, job_server)
