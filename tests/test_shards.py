"""Stage 4 (`pipeline.shards`, `pipeline.shards.netguard`): address guard on strings, error grouping, and end-to-end
downloads from the loopback image server (round trip, misbehaving server, refused loopback, resume, retry).

Network: only 127.0.0.1 / localhost is ever contacted. Private and metadata addresses appear only as strings
given to pure functions, or as URLs that the pre-download filter refuses without any connection.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from hypothesis import given
from hypothesis import strategies as st

from pipeline.shards import stage as shards
from pipeline import stats
from pipeline.shards.netguard import (
    BAD_URL,
    BODY_TOO_LARGE,
    DECOMPRESSION_BOMB,
    REFUSED_ADDRESS,
    TRUNCATED_IMAGE,
    FetchPolicy,
    build_guarded_opener,
    image_refusal,
    is_refused_address,
    jpeg_or_png_size,
    url_refusal,
)
from pipeline.common.records import uid_of
from demo.imageserver import (
    ImageServer,
    add_folder,
    add_misbehaving_routes,
    encode,
    make_bomb_png,
    make_image,
    make_jpeg,
    make_png,
)

QUERIES = ["cat", "dog", "tree"]
COMMON = ["--processes", "1", "--threads", "8", "--timeout", "1", "--samples-per-shard", "5",
          "--min-image-size", "16", "--image-size", "64"]


# ---- pure: the address guard, on strings only ----

@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.9.10", "::1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "fe80::1%eth0",
    "fd00:ec2::254", "100.100.100.200", "0.0.0.0", "::", "224.0.0.1", "255.255.255.255", "::ffff:127.0.0.1",
    "::ffff:10.1.2.3", "192.0.2.1", "not-an-address", ""])
def test_non_global_addresses_are_refused(address):
    assert is_refused_address(address) is True


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_global_addresses_are_allowed(address):
    assert is_refused_address(address) is False


def test_allow_loopback_admits_loopback_only():
    assert is_refused_address("127.0.0.1", allow_loopback=True) is False
    assert is_refused_address("::1", allow_loopback=True) is False
    assert is_refused_address("10.0.0.1", allow_loopback=True) is True
    assert is_refused_address("169.254.169.254", allow_loopback=True) is True


@pytest.mark.parametrize("url, reason", [
    ("http://8.8.8.8/a.jpg", None), ("https://example.com/a.jpg", None), ("HTTP://example.com/a.jpg", None),
    ("http://10.0.0.1/a.jpg", REFUSED_ADDRESS), ("http://[::1]:8080/a.jpg", REFUSED_ADDRESS),
    ("http://169.254.169.254/latest/meta-data/", REFUSED_ADDRESS), ("file:///etc/passwd", BAD_URL),
    ("ftp://example.com/a.jpg", BAD_URL), ("data:image/png;base64,AAAA", BAD_URL), ("http:///a.jpg", BAD_URL),
    ("http://example.com:99999999/a.jpg", BAD_URL), ("", BAD_URL), (None, BAD_URL)])
def test_url_refusal_without_lookup(url, reason):
    assert url_refusal(url) == reason


def test_url_refusal_allows_loopback_literal_only_when_asked():
    assert url_refusal("http://127.0.0.1:8000/a.jpg") == REFUSED_ADDRESS
    assert url_refusal("http://127.0.0.1:8000/a.jpg", allow_loopback=True) is None


# ---- the guarded opener, in process, against the loopback server ----

def fetch_reason(url: str, policy: FetchPolicy) -> str | None:
    """None if the guarded opener fetches url, else the reason of its error (as img2dataset would record it)."""
    try:
        with build_guarded_opener(policy).open(url, timeout=2) as response:
            response.read()
    except (OSError, ValueError) as err:  # URLError and HTTPError are OSErrors
        return shards.failure_reason(str(err))
    return None


def test_guarded_opener_refuses_loopback_by_address_and_by_name(image_server):
    url = image_server.add("/a.jpg", make_jpeg(32, 32))
    assert fetch_reason(url, FetchPolicy(allow_loopback=True)) is None
    assert fetch_reason(url, FetchPolicy()) == REFUSED_ADDRESS
    assert fetch_reason(url.replace("127.0.0.1", "localhost"), FetchPolicy()) == REFUSED_ADDRESS
    assert fetch_reason("file:///etc/hostname", FetchPolicy(allow_loopback=True)) == BAD_URL


def test_guarded_opener_bounds_bodies_and_pixels(image_server):
    url = image_server.add("/a.jpg", make_jpeg(64, 64))
    assert fetch_reason(url, FetchPolicy(allow_loopback=True, max_bytes=100)) == BODY_TOO_LARGE
    assert fetch_reason(url, FetchPolicy(allow_loopback=True, max_pixels=1000)) == DECOMPRESSION_BOMB
    redirect = image_server.add("/moved", b"", status=302, content_type="text/plain", headers={"Location": "/a.jpg"})
    assert fetch_reason(redirect, FetchPolicy(allow_loopback=True)) is None  # redirects pass through the same guard
    assert fetch_reason(redirect, FetchPolicy(allow_loopback=True, max_pixels=1000)) == DECOMPRESSION_BOMB


def test_image_server_serves_a_folder(image_server, tmp_path):
    (tmp_path / "a.png").write_bytes(make_png(20, 10))
    urls = add_folder(image_server, tmp_path)
    assert list(urls) == ["a.png"]
    with build_guarded_opener(FetchPolicy(allow_loopback=True)).open(urls["a.png"], timeout=2) as response:
        assert response.headers["Content-Type"] == "image/png" and response.read() == make_png(20, 10)


# ---- pure: body checks and error grouping ----

def test_image_refusal_on_bodies():
    jpeg = make_jpeg(80, 60)
    assert image_refusal(jpeg, max_pixels=10_000) is None
    assert image_refusal(jpeg, max_pixels=100) == DECOMPRESSION_BOMB
    assert image_refusal(make_bomb_png(), max_pixels=89_478_485) == DECOMPRESSION_BOMB
    assert image_refusal(jpeg[: len(jpeg) // 2], max_pixels=10_000) == TRUNCATED_IMAGE
    assert image_refusal(make_png(40, 30)[:-30], max_pixels=10_000) == TRUNCATED_IMAGE
    assert image_refusal(jpeg + b"\x00" * 200, max_pixels=10_000) is None  # trailing junk is not truncation
    assert image_refusal(b"<html></html>", max_pixels=10_000) is None      # left to img2dataset's decoder


def test_jpeg_or_png_size_reads_headers_like_pil():
    progressive = encode(make_image(90, 70, seed=3), "JPEG", progressive=True, quality=70)
    for body, size in [(make_jpeg(123, 45), (123, 45)), (make_png(77, 33), (77, 33)), (progressive, (90, 70)),
                       (make_bomb_png(), (20_000, 20_000))]:
        assert jpeg_or_png_size(body) == size
    assert jpeg_or_png_size(b"GIF89a....") is None
    assert jpeg_or_png_size(b"\xff\xd8\xff\xe0\x00") is None           # cut before any SOF
    assert jpeg_or_png_size(b"\xff\xd8" + b"\x00" * 20) is None          # not a marker where one must be


@pytest.mark.parametrize("message, reason", [
    ("HTTP Error 404: Not Found", "http_status_404"), ("HTTP Error 503: Service Unavailable", "http_status_503"),
    ("timed out", "timeout"), ("<urlopen error timed out>", "timeout"), ("The read operation timed out", "timeout"),
    ("HTTP Error 302: The HTTP server returned a redirect error that would lead to an infinite loop.", "redirect_loop"),
    ("Use of image disallowed by X-Robots-Tag directive", "opt_out"), ("Image decoding error", "not_an_image"),
    ("image too small", "too_small"), ("aspect ratio too large", "aspect_ratio_too_large"),
    ("<urlopen error refused_address: localhost resolves to 127.0.0.1>", REFUSED_ADDRESS),
    ("decompression_bomb: 48685 bytes", DECOMPRESSION_BOMB), ("<urlopen error unknown url type: file>", BAD_URL),
    ("<urlopen error [Errno 111] Connection refused>", "connection_error"),
    ("<urlopen error name resolution failed for x.invalid>", "dns_error"), ("hash mismatch", "hash_mismatch"),
    ("something new", "other_error"), (None, "other_error")])
def test_failure_reason_groups_img2dataset_messages(message, reason):
    assert shards.failure_reason(message) == reason


def test_transient_reasons():
    assert all(map(shards.is_transient, ["timeout", "connection_error", "http_status_503", "http_status_429"]))
    assert not any(map(shards.is_transient, ["http_status_404", "opt_out", "refused_address", "not_an_image"]))


@given(st.lists(st.integers(0, 50), max_size=6), st.integers(1, 12))
def test_shard_sizes_cover_every_row(rows_per_file, per_shard):
    sizes = shards.shard_sizes(rows_per_file, per_shard)
    assert sum(sizes) == sum(rows_per_file)
    assert all(0 < size <= per_shard for size in sizes)


def test_query_names():
    assert shards.query_names([2, 0, 7], QUERIES) == ["tree", "cat", None]
    assert shards.query_names(None, QUERIES) == []


def test_bad_input_files_exit_with_one_line(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    pq.write_table(pa.table({"url": ["http://x/a.jpg"]}), tmp_path / "cols.parquet")
    with pytest.raises(SystemExit, match="not a readable parquet"):
        shards.open_input(str(tmp_path / "bad.parquet"))
    with pytest.raises(SystemExit, match="missing column.*uid"):
        shards.open_input(str(tmp_path / "cols.parquet"))
    with pytest.raises(SystemExit, match="shards: no file matches .*nothing-"):
        shards.run(["--input", str(tmp_path / "nothing-*.parquet"), "--out", str(tmp_path / "out")])


def test_prepare_input_filters_names_and_keeps_file_order(tmp_path):
    write_input(tmp_path / "a.parquet", [("http://example.com/1.jpg", "one"), ("file:///etc/passwd", "two"),
                                         ("http://192.168.0.1/3.jpg", "three")])
    write_input(tmp_path / "b.parquet", [])
    write_input(tmp_path / "c.parquet", [("https://example.org/4.jpg", "four")])
    inputs = [{"path": str(tmp_path / f"{name}.parquet")} for name in "abc"]
    prepared = shards.prepare_input(inputs, str(tmp_path / "out"), QUERIES, allow_loopback=False, fingerprint={})
    assert (prepared["read"], prepared["rows_per_file"]) == (4, [1, 0, 1])
    assert prepared["rejected"] == {BAD_URL: 1, REFUSED_ADDRESS: 1}
    parts = sorted((tmp_path / "out" / "_input").glob("part-*.parquet"))
    assert [pq.read_table(p).num_rows for p in parts] == [1, 0, 1]
    assert all(pq.read_schema(p).names == ["uid", "url", "caption", "query_ids", "query_names"] for p in parts)
    assert pq.read_table(parts[0]).column("query_names").to_pylist() == [["cat", "dog"]]
    assert shards.load_prepared(str(tmp_path / "out")) == prepared


# ---- end to end against the loopback server ----

def write_input(path: Path, pairs: list[tuple[str, str]]) -> list[str]:
    uids = [uid_of(url, caption) for url, caption in pairs]
    pq.write_table(pa.table({"uid": pa.array(uids, pa.string()), "url": pa.array([u for u, _ in pairs], pa.string()),
                             "caption": pa.array([c for _, c in pairs], pa.string()),
                             "query_ids": pa.array([[i % 3, (i + 1) % 3] for i in range(len(pairs))], pa.list_(pa.int64())),
                             "extra": list(range(len(pairs)))}), path)
    return uids


def write_queries(path: Path) -> None:
    lines = ["query_id\tquery\tsource\tcount\tpmi"] + [f"{i}\t{q}\tunigram\t100\t" for i, q in enumerate(QUERIES)]
    path.write_text("\n".join(lines) + "\n")


def read_samples(folder: Path) -> dict[str, dict]:
    """uid -> {caption, json, jpg size} read back with webdataset."""
    tars = sorted(str(p) for p in folder.glob("*.tar"))
    out = {}
    for sample in wds.WebDataset(tars, shardshuffle=False, empty_check=False):
        out[sample["__key__"]] = {"txt": sample["txt"].decode(), "json": json.loads(sample["json"]),
                                  "jpg_bytes": len(sample["jpg"])}
    return out


@pytest.fixture(scope="module")
def server():
    with ImageServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def downloaded(server, tmp_path_factory):
    """One run over 8 good images, every misbehaving route and a bad-scheme row refused before download."""
    root = tmp_path_factory.mktemp("shards")
    good = [(server.add(f"/img{i}.jpg", make_jpeg(60 + 8 * i, 48, seed=i)), f"a photo number {i}") for i in range(8)]
    bad = add_misbehaving_routes(server, slow_s=3.0)
    pairs = good + [(url, f"bad {reason}") for reason, url in bad.items()]
    # refused before download; no private or public address ever enters a run that fetches (DEVELOPERS.md,
    # "Network safety": the refused-address path is tested on strings and with loopback-off runs)
    pairs += [("file:///etc/passwd", "bad scheme")]
    uids = write_input(root / "in.parquet", pairs)
    write_queries(root / "queries.tsv")
    argv = ["--input", str(root / "in.parquet"), "--out", str(root / "out"), "--queries", str(root / "queries.tsv"),
            "--allow-loopback", *COMMON]
    manifest = shards.run(argv)
    return {"root": root, "argv": argv, "manifest": manifest, "pairs": pairs, "uids": uids, "good": len(good),
            "bad": bad}


@pytest.mark.slow
def test_round_trip_same_uids_captions_metadata(downloaded):
    samples = read_samples(downloaded["root"] / "out")
    good = dict(zip(downloaded["uids"][:downloaded["good"]], downloaded["pairs"][:downloaded["good"]]))
    assert set(samples) == set(good)
    for uid, (url, caption) in good.items():
        meta = samples[uid]["json"]
        assert samples[uid]["txt"] == caption
        assert (meta["uid"], meta["url"], meta["caption"], meta["key"]) == (uid, url, caption, uid)
        assert meta["query_names"] == [QUERIES[i] for i in meta["query_ids"]] and len(meta["query_ids"]) == 2
        assert meta["original_height"] == 48 and meta["height"] == 48  # never upscaled to 64
        assert len(meta["sha256"]) == 64 and samples[uid]["jpg_bytes"] > 0


@pytest.mark.slow
def test_every_row_is_accounted_for_with_its_reason(downloaded):
    counters = downloaded["manifest"]["counters"]
    expected = {reason: 1 for reason in downloaded["bad"]} | {BAD_URL: 1}
    assert counters == {"read": len(downloaded["pairs"]), "kept": downloaded["good"], "rejected": expected}
    out = downloaded["root"] / "out"
    assert json.loads((out / "manifest.json").read_text())["counters"] == counters
    assert pq.read_table(out / "_rejected.parquet").column("reason").to_pylist() == [BAD_URL]


@pytest.mark.slow
def test_loopback_refused_without_allow_loopback(server, tmp_path):
    pairs = [(server.url(f"/img{i}.jpg"), f"c{i}") for i in range(3)]
    pairs += [(server.url(f"/img{i}.jpg").replace("127.0.0.1", "localhost"), f"by name {i}") for i in range(3)]
    write_input(tmp_path / "in.parquet", pairs)
    manifest = shards.run(["--input", str(tmp_path / "in.parquet"), "--out", str(tmp_path / "out"), *COMMON])
    # IP literals are refused before download, host names when the connection opens: none is fetched.
    assert manifest["counters"] == {"read": 6, "kept": 0, "rejected": {REFUSED_ADDRESS: 6}}
    assert read_samples(tmp_path / "out") == {}


@pytest.mark.slow
def test_resume_after_interruption_gives_the_same_samples(downloaded, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(downloaded["root"] / "out", out)
    before = read_samples(out)
    # Simulate a run killed while writing shard 00001: no _stats.json, a truncated tar, a stale manifest.
    (out / "00001_stats.json").unlink()
    tar = out / "00001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 3])
    first_shard_mtime = (out / "00000.tar").stat().st_mtime_ns
    argv = [a if a != str(downloaded["root"] / "out") else str(out) for a in downloaded["argv"]]
    manifest = shards.run(argv)
    assert read_samples(out) == before
    assert manifest["counters"] == downloaded["manifest"]["counters"]
    assert (out / "00000.tar").stat().st_mtime_ns == first_shard_mtime  # finished shards are not redone
    report = stats.run(["--shards", str(out), "--out", str(tmp_path / "report")])  # the combined statistics
    assert report["samples"] == report["download"]["successes"] == manifest["counters"]["kept"]
    assert report["download"]["count"] == manifest["counters"]["read"] - 1  # every row once; 1 refused before download
    assert report["download"]["manifest_counters"] == manifest["counters"]


@pytest.mark.slow
def test_retry_failed_rescues_transient_failures(downloaded, server, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(downloaded["root"] / "out", out)
    # The server recovers: the 500 and the slow URL now serve images; the 404 stays (not transient).
    with server.routes_restored():
        server.add("/error.jpg", make_jpeg(70, 50, seed=7))
        server.add("/slow.jpg", make_jpeg(70, 50, seed=8))
        manifest = shards.run(["--out", str(out), "--retry-failed", "--allow-loopback", *COMMON])
    counters = manifest["counters"]
    assert counters["kept"] == downloaded["good"] + 2
    assert "http_status_500" not in counters["rejected"] and "timeout" not in counters["rejected"]
    assert counters["rejected"]["http_status_404"] == 1
    assert len(read_samples(out)) == downloaded["good"] + 2
    assert manifest["shards"] > manifest["main_shards"]
