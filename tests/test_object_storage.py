"""Object storage for real: the stages read and write `s3://` on an S3 API served by moto on 127.0.0.1
(ephemeral port), and their outputs equal a local run's.

The whole chain: queries -> match -> balance (Beam stages: fsspec outside the pipeline, Beam's S3 filesystem
inside, here also given the `--s3_*` pipeline options), then shards -> dedup -> stats -> train (stopped and
resumed from s3://) -> zeroshot -> overlap -> export. The endpoint reaches every process (img2dataset's and
dedup's workers too) as it would for a user of an S3-compatible store: `AWS_ENDPOINT_URL_S3` and the usual
AWS credential variables (README, "Running on a cluster").
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
        # What a user of an S3-compatible store sets: botocore's endpoint variable, which fsspec's s3fs (here and in
        # every worker process: img2dataset's, dedup's) and Beam's S3 filesystem all read
        mp.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        mp.delenv("FSSPEC_S3_ENDPOINT_URL", raising=False)
        fs = fsspec.filesystem("s3", endpoint_url=endpoint, skip_instance_cache=True)
        fs.mkdir("witbuild")
        yield endpoint, fs
    finally:
        mp.undo()
        server.terminate()
        server.wait(timeout=30)


def test_atomic_write_on_s3_shows_the_old_object_until_the_new_one_is_whole(s3):
    from pipeline.common import files
    _, fs = s3
    path = "s3://witbuild/atomic/report.txt"
    with files.atomic_write(path, "w", encoding="utf-8") as f:
        f.write("first \u00e8")
    with files.atomic_write(path) as f:
        f.write(b"second")
        assert fs.cat(path) == "first \u00e8".encode()   # nothing of the new object is visible while it is written
    with pytest.raises(RuntimeError):
        with files.atomic_write(path) as f:
            f.write(b"half")
            raise RuntimeError("writer died")
    assert fs.cat(path) == b"second" and fs.ls("witbuild/atomic") == ["witbuild/atomic/report.txt"]
    assert fs.call_s3("list_multipart_uploads", Bucket="witbuild").get("Uploads", []) == []   # none left open


def test_every_eval_set_layout_reads_from_s3_as_locally(s3, tmp_path):
    """ImageFolder (class folders listed on the store), WebDataset shards with CLIP_benchmark's classnames.txt and
    templates one level up, and an MNIST-style CSV.gz with a YAML side file: same images, labels, names."""
    import gzip

    from pipeline.common.evalsets import eval_set_signature, iter_eval_images, open_eval_set
    from tests.evalfixtures import EVAL_SEEDS, jpeg_bytes, pattern_image, write_imagefolder, write_wds_eval
    _, fs = s3
    write_imagefolder(tmp_path / "folder", EVAL_SEEDS)
    (tmp_path / "bench" / "test").mkdir(parents=True)
    items = [(f"k{i}", i % 2, jpeg_bytes(pattern_image(i))) for i in range(4)]
    write_wds_eval(tmp_path / "bench" / "test" / "0.tgz", items)
    (tmp_path / "bench" / "classnames.txt").write_text("cat\ndog\n")
    (tmp_path / "bench" / "zeroshot_classification_templates.txt").write_text("a photo of a {}.\n")
    with gzip.open(tmp_path / "digits.csv.gz", "wt") as f:
        f.write(",".join(["9"] * 784 + ["1"]) + "\n")
    (tmp_path / "digits.classnames.yaml").write_text("classnames: [zero, one]\n")
    fs.put(f"{tmp_path}/", "witbuild/evalsets", recursive=True)
    for path in ("folder", "bench/test", "digits.csv.gz"):
        local, remote = open_eval_set("x", str(tmp_path / path)), open_eval_set("x", f"s3://witbuild/evalsets/{path}")
        assert (remote.layout, remote.classnames, remote.templates) == (local.layout, local.classnames, local.templates)
        assert list(iter_eval_images(remote)) == list(iter_eval_images(local)), path
        assert len(eval_set_signature(remote)) == 16
    assert open_eval_set("x", "s3://witbuild/evalsets/bench/test").templates == ("a photo of a {}.",)


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


# ---- shards -> dedup -> stats -> train -> zeroshot -> overlap (and export) ----

S3_ROOT = "s3://witbuild/chain"
CHAIN_SEEDS = list(range(100, 121))   # 21 distinct training images besides the planted copies


def write_chain_inputs(folder: Path, server) -> None:
    """The chain's inputs, in `folder`: balanced pairs whose URLs the loopback server answers (3 of them web
    copies of eval images), their queries.tsv, and a WebDataset eval set with classnames.txt beside it."""
    import pyarrow as pa

    from pipeline.common.records import uid_of
    from tests.evalfixtures import EVAL_SEEDS, PLANTED, jpeg_bytes, pattern_image, web_copy, write_wds_eval

    names = ["cat", "dog", "photo"]
    rows = []
    for i, seed in enumerate(CHAIN_SEEDS):
        url = server.add(f"/img{seed}.jpg", jpeg_bytes(pattern_image(seed, 80)))
        rows.append((url, f"a photo of a {names[i % 2]} number {i}", [i % 2, 2]))
    for key, seed in PLANTED.items():
        cls = next(c for c, seeds in EVAL_SEEDS.items() if seed in seeds)
        rows.append((server.add(f"/{key}.jpg", web_copy(pattern_image(seed))), f"my {cls} photo {key}", [0, 2]))
    pq.write_table(pa.table({"uid": [uid_of(u, c) for u, c, _ in rows], "url": [u for u, _, _ in rows],
                             "caption": [c for _, c, _ in rows],
                             "query_ids": pa.array([q for _, _, q in rows], pa.list_(pa.int64()))}),
                   folder / "balanced.parquet")
    (folder / "queries.tsv").write_text("query_id\tquery\tsource\tcount\tpmi\n"
                                        + "".join(f"{i}\t{q}\tunigram\t100\t\n" for i, q in enumerate(names)))
    (folder / "eval").mkdir()
    items = [(f"{s:04d}", label, jpeg_bytes(pattern_image(s)))
             for label, seeds in enumerate(EVAL_SEEDS.values()) for s in seeds]
    write_wds_eval(folder / "eval" / "pets.tgz", items)
    (folder / "eval" / "classnames.txt").write_text("".join(f"{c}\n" for c in EVAL_SEEDS))


TRAIN_ARGS = ["--config", "train/configs/tiny.json", "--device", "cpu", "--steps", "6", "--batch-size", "8",
              "--warmup", "2", "--workers", "0", "--log-every", "2", "--ckpt-every", "3", "--set", "run.threads=1",
              "--set", "data.shuffle_buffer=16", "--set", "data.shuffle_initial=4"]


def run_rest_of_chain(root: str) -> dict:
    """Every stage after `balance` with every input and output under `root` (a local folder or an s3:// URL);
    training stops at step 3 and resumes from `root` to step 6. One download thread per process: img2dataset
    writes a shard's samples in the order its threads finish, so with more the member order (and so the
    training batches) would differ from run to run, on any storage."""
    from pipeline import overlap, stats
    from pipeline.dedup import stage as dedup
    from pipeline.shards import stage as shards
    from train import export, train, zeroshot

    eval_set = f"pets={root}/in/eval/pets.tgz"
    out = {"shards": shards.run(["--input", f"{root}/in/balanced.parquet", "--out", f"{root}/shards",
                                 "--queries", f"{root}/in/queries.tsv", "--allow-loopback", "--processes", "2",
                                 "--threads", "1", "--timeout", "5", "--samples-per-shard", "10",
                                 "--min-image-size", "16", "--image-size", "48"])}
    out["dedup"] = dedup.run(["--shards", f"{root}/shards", "--eval", eval_set, "--out", f"{root}/dedup",
                              "--out-shards", f"{root}/kept", "--samples-per-shard", "8", "--workers", "2"])
    out["dedup_again"] = dedup.run(["--shards", f"{root}/shards", "--eval", eval_set, "--out", f"{root}/dedup",
                                    "--workers", "1"])   # from its cache
    out["stats"] = stats.run(["--shards", f"{root}/shards", "--queries", f"{root}/in/queries.tsv",
                              "--out", f"{root}/stats", "--exclude", f"{root}/dedup"])
    common = ["--shards", f"{root}/shards", "--exclude", f"{root}/dedup", "--out", f"{root}/run", *TRAIN_ARGS]
    train.main([*common, "--stop-at", "3"])
    out["train"] = train.main([*common, "--resume"])
    out["dedup_embed"] = dedup.run(["--shards", f"{root}/shards", "--eval", eval_set, "--out", f"{root}/dedup-embed",
                                    "--workers", "1", "--embed-checkpoint", f"{root}/run/ckpt_latest.pt",
                                    "--embed-device", "cpu"])   # the embedding signal: checkpoint and cache on s3://
    out["zeroshot"] = zeroshot.main(["--checkpoint", f"{root}/run/ckpt_latest.pt", "--eval-set", eval_set,
                                     "--pairs", f"{root}/kept", "--device", "cpu"])
    out["overlap"] = overlap.run(["--dedup", f"{root}/dedup", "--predictions", f"{root}/run/predictions_pets.jsonl",
                                  "--out", f"{root}/overlap"])
    out["export"] = export.main([f"{root}/run", "--out", f"{root}/exported", "--name", "tiny"])
    return out


def tar_members(path: Path) -> list[tuple[str, bytes]]:
    from pipeline.common import rawtar
    with open(path, "rb") as f:
        return [(m.name, m.data) for m in rawtar.iter_members(f)]


def parquet_rows(path: Path, drop: tuple[str, ...] = ()) -> list[dict]:
    """Rows with path columns cut to their last part (a local path or an s3:// URL) and `drop` left out."""
    rows = pq.read_table(path).to_pylist()
    return [{k: (v.rsplit("/", 1)[-1] if k in ("shard", "source_shard") and isinstance(v, str) else v)
             for k, v in r.items() if k not in drop} for r in rows]


def without(record: dict, *keys: str) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def rooted(report: dict, root: str) -> dict:
    """A report with its run's root folder or URL written as ROOT (reports name their inputs and outputs)."""
    import json
    return json.loads(json.dumps(report).replace(root, "ROOT"))


def test_rest_of_the_chain_on_s3_equals_the_local_run(s3, tmp_path):
    """shards -> dedup -> stats -> train (stopped, resumed) -> dedup with the embedding signal -> zeroshot ->
    overlap -> export, all on s3://."""
    import json

    import torch

    from demo.imageserver import ImageServer
    endpoint, fs = s3
    local, remote = tmp_path / "local", tmp_path / "remote"
    with ImageServer() as server:
        (local / "in").mkdir(parents=True)
        write_chain_inputs(local / "in", server)
        fs.put(f"{local}/in/", "witbuild/chain/in", recursive=True)
        want = run_rest_of_chain(str(local))
        got = run_rest_of_chain(S3_ROOT)
    fs.get("witbuild/chain/", str(remote), recursive=True)

    # shards: the same samples in the same shards, member for member; the same rows attempted
    assert got["shards"]["counters"] == want["shards"]["counters"] == {"read": 24, "kept": 24, "rejected": {}}
    tars = sorted(p.name for p in (local / "shards").glob("*.tar"))
    assert tars == sorted(p.name for p in (remote / "shards").glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    for name in tars:
        assert tar_members(remote / "shards" / name) == tar_members(local / "shards" / name), name
        stem = name[: -len(".tar")]
        assert parquet_rows(remote / "shards" / f"{stem}.parquet") == parquet_rows(local / "shards" / f"{stem}.parquet")

    # dedup: the same decisions and drops (the 3 planted copies), twice (the second from the cache on s3://),
    # and the same kept shards
    for run in ("dedup", "dedup_again"):
        assert got[run]["counters"] == want[run]["counters"] == {"read": 24, "kept": 21,
                                                                 "rejected": {"eval_duplicate": 3}}
    for name in ("decisions", "dropped"):
        assert parquet_rows(remote / "dedup" / f"{name}.parquet") == parquet_rows(local / "dedup" / f"{name}.parquet")
    assert got["dedup_embed"]["counters"] == want["dedup_embed"]["counters"]
    assert got["dedup_embed"]["settings"]["embed_checkpoint_sha256"] == \
        want["dedup_embed"]["settings"]["embed_checkpoint_sha256"]
    assert parquet_rows(remote / "dedup-embed" / "decisions.parquet") == \
        parquet_rows(local / "dedup-embed" / "decisions.parquet")
    assert len(list((remote / "dedup-embed" / "cache" / "embed").rglob("*.parquet"))) == 4   # 3 shards, 1 eval set
    def cached(folder: Path) -> list[str]:   # cache files are named by the file's path and version: keep the stem
        found = (folder / "dedup" / "cache").rglob("*.parquet")
        return sorted(f"{p.parent.name}/{p.name.split('-')[0]}" for p in found)

    assert cached(remote) == cached(local) == ["eval/pets", "shards/00000", "shards/00001", "shards/00002"]
    kept = sorted(p.name for p in (local / "kept").iterdir())
    assert kept == sorted(p.name for p in (remote / "kept").iterdir())
    for name in kept:
        if name.endswith(".tar"):
            assert tar_members(remote / "kept" / name) == tar_members(local / "kept" / name), name
        elif name.endswith(".parquet"):
            assert parquet_rows(remote / "kept" / name) == parquet_rows(local / "kept" / name), name

    # stats: the same report but for its timings and the folder's name
    timing = ("read_seconds", "samples_per_s")
    assert rooted(without(got["stats"], *timing), S3_ROOT) == rooted(without(want["stats"], *timing), str(local))
    assert {p.name for p in (remote / "stats").iterdir()} == {p.name for p in (local / "stats").iterdir()} >= \
        {"stats.json", "stats.md", "captions.png", "images.png", "queries.png", "contact_sheet.png"}

    # train: stopped at 3 and resumed from s3://, the same weights, optimizer state and metrics as the local run
    a = torch.load(local / "run" / "ckpt_latest.pt", weights_only=True)
    b = torch.load(remote / "run" / "ckpt_latest.pt", weights_only=True)
    assert a["step"] == b["step"] == 6 and (a["epoch"], a["batches_done"]) == (b["epoch"], b["batches_done"])
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    assert got["train"]["loss"] == want["train"]["loss"]

    def metrics(folder: Path) -> list[dict]:
        return [without(json.loads(line), "samples_per_s", "data_share")
                for line in (folder / "run" / "metrics.jsonl").read_text().splitlines()]

    assert metrics(remote) == metrics(local) and [m["step"] for m in metrics(local)] == [2, 3, 4, 6]
    assert sorted(p.name for p in (remote / "run").iterdir()) == sorted(p.name for p in (local / "run").iterdir())

    # zeroshot: the same predictions and numbers; overlap: the same report numbers
    predictions = "run/predictions_pets.jsonl"
    assert (remote / predictions).read_bytes() == (local / predictions).read_bytes()
    assert rooted(got["zeroshot"], S3_ROOT) == rooted(want["zeroshot"], str(local))
    assert got["zeroshot"]["predictions"] == f"{S3_ROOT}/run/predictions_pets.jsonl"
    assert json.loads((remote / "run" / "zeroshot_pets.json").read_text())["classification"] == \
        want["zeroshot"]["classification"]

    assert rooted(got["overlap"], S3_ROOT) == rooted(want["overlap"], str(local))
    assert got["overlap"]["sets"]["pets"]["overlap_images"] == 3
    assert sorted(p.name for p in (remote / "overlap").rglob("*")) == \
        sorted(p.name for p in (local / "overlap").rglob("*"))

    # export: the same weights
    ea = torch.load(local / "exported" / "tiny.pt", weights_only=True)
    eb = torch.load(remote / "exported" / "tiny.pt", weights_only=True)
    assert ea.keys() == eb.keys() and all(torch.equal(ea[k], eb[k]) for k in ea)
    assert (remote / "exported" / "tiny.json").read_bytes() == (local / "exported" / "tiny.json").read_bytes()
