"""`pipeline.stats`: histograms, reservoir, and a report over a shard folder with a truncated and an empty tar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import webdataset as wds
from hypothesis import given
from hypothesis import strategies as st

from pipeline.common import rawtar
from pipeline import stats
from demo.imageserver import make_jpeg

QUERIES = ["cat", "dog", "tree", "unused"]


def write_shard(path: Path, start: int, count: int) -> None:
    with open(path, "wb") as f, wds.TarWriter(f, mtime=0) as writer:  # integer mtime: see DESIGN.md
        for i in range(start, start + count):
            width, height = 40 + i, 30
            meta = {"uid": f"{i:032x}", "width": width, "height": height, "original_width": width * 2,
                    "original_height": height * 2, "query_ids": [i % 3]}
            writer.write({"__key__": f"{i:032x}", "jpg": make_jpeg(width, height, seed=i),
                          "txt": " ".join(["word"] * (i % 5 + 1)), "json": json.dumps(meta)})


def write_stats_json(path: Path, count: int, successes: int, messages: dict[str, int]) -> None:
    path.write_text(json.dumps({"count": count, "successes": successes, "failed_to_download": count - successes,
                                "failed_to_resize": 0, "status_dict": messages}))


@pytest.fixture
def shard_folder(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    write_shard(folder / "00000.tar", 0, 6)
    write_shard(folder / "00001.tar", 6, 6)
    write_shard(folder / "00002.tar", 12, 6)
    good = (folder / "00002.tar").read_bytes()
    (folder / "00002.tar").write_bytes(good[: len(good) // 2 + 100])   # truncated mid-member
    (folder / "00003.tar").write_bytes(b"")                          # empty file
    write_shard(folder / "00004.tar", 0, 0)                          # a valid tar without samples
    write_stats_json(folder / "00000_stats.json", 8, 6, {"success": 6, "HTTP Error 404: Not Found": 2})
    write_stats_json(folder / "00001_stats.json", 7, 6, {"success": 6, "timed out": 1})
    (folder / "00005_stats.json").write_text("{not json")
    (folder / "manifest.json").write_text(json.dumps({"counters": {"read": 16, "kept": 12,
                                                                    "rejected": {"bad_url": 1, "timeout": 3}}}))
    queries = tmp_path / "queries.tsv"
    queries.write_text("query_id\tquery\tsource\tcount\tpmi\n"
                       + "".join(f"{i}\t{q}\tunigram\t100\t\n" for i, q in enumerate(QUERIES)))
    return folder, queries


def test_report_lists_truncated_and_empty_shards_and_summarises_the_rest(shard_folder, tmp_path):
    folder, queries = shard_folder
    out = tmp_path / "report"
    report = stats.run(["--shards", str(folder), "--out", str(out), "--queries", str(queries)])
    assert report["shards"]["read"] == 5 and report["shards"]["ok"] == 2
    assert sorted(Path(p).name for p in report["shards"]["empty"]) == ["00003.tar", "00004.tar"]
    [corrupt] = report["shards"]["corrupt"]
    assert Path(corrupt["path"]).name == "00002.tar" and 0 <= corrupt["samples_before_error"] < 6
    assert report["samples"] == 12 + corrupt["samples_before_error"]
    assert report["samples_per_shard"] == {"mean": 6.0, "min": 6, "max": 6}
    assert report["captions"]["words"]["n"] == report["samples"] and report["captions"]["words"]["max"] == 5
    assert report["images"]["height"]["min"] == 30 and report["images"]["original_height"]["max"] == 60
    assert report["download"] | {"failure_reasons": None} == {
        "stats_files": 2, "count": 15, "successes": 12, "failed_to_download": 3, "failed_to_resize": 0,
        "success_rate": 0.8, "failure_reasons": None, "manifest_counters": {"read": 16, "kept": 12,
                                                                            "rejected": {"bad_url": 1, "timeout": 3}}}
    assert report["download"]["failure_reasons"] == {"http_status_404": 2, "timeout": 1}
    assert report["queries"]["zero_sample_queries"] == 1 and report["queries"]["zero_sample_examples"] == ["unused"]
    assert {e["query"] for e in report["queries"]["top"]} == {"cat", "dog", "tree"}
    for name in ("stats.json", "stats.md", "captions.png", "images.png", "queries.png", "contact_sheet.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "stats.json").read_text())["samples"] == report["samples"]
    assert "00002.tar" in (out / "stats.md").read_text()


def test_max_samples_stops_early(shard_folder, tmp_path):
    folder, _ = shard_folder
    report = stats.run(["--shards", str(folder / "0000[01].tar"), "--out", str(tmp_path / "r"), "--max-samples", "8"])
    assert report["samples"] == 8


def test_no_shards_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match=r"stats: no file matches .*\*\.tar files"):
        stats.run(["--shards", str(tmp_path), "--out", str(tmp_path / "r")])


def test_histogram_bins_and_quantiles():
    hist = stats.Histogram(0, 10, 10)
    for value in [-1, 0, 1, 1, 2, 5, 9.5, 10, 25]:
        hist.add(value)
    assert (hist.under, hist.over, hist.counts[1], hist.n) == (1, 2, 2, 9)
    assert hist.quantile(0.5) == 2.5 and hist.quantile(0.0) == -1 and hist.quantile(1.0) == 25
    assert stats.Histogram(0, 1, 2).summary() == {"n": 0}


@given(st.lists(st.floats(-50, 150, allow_nan=False), max_size=200))
def test_histogram_keeps_every_value(values):
    hist = stats.Histogram(0, 100, 20)
    for value in values:
        hist.add(value)
    assert hist.n == sum(hist.counts) + hist.under + hist.over == len(values)
    if values:
        assert min(values) <= hist.quantile(0.5) <= max(values)


def test_reservoir_is_bounded_and_seeded():
    def fill():
        s = stats.ShardStats()
        for i in range(500):
            s.add_sample({"jpg": bytes([i % 256]) * 10, "txt": f"caption {i}".encode()})
        return s
    first, second = fill(), fill()
    assert len(first.reservoir) == stats.CONTACT_SHEET_SAMPLES
    assert first.reservoir == second.reservoir


def test_a_tar_cut_at_a_member_boundary_is_corrupt(tmp_path):
    write_shard(tmp_path / "a.tar", 0, 2)
    whole = (tmp_path / "a.tar").read_bytes()
    second_header = whole.index(f"{1:032x}.jpg".encode())  # a member's name opens its header block
    (tmp_path / "cut.tar").write_bytes(whole[:second_header])
    entry = stats.read_shard(str(tmp_path / "cut.tar"), stats.ShardStats(), None)
    assert entry["status"] == stats.CORRUPT and entry["samples"] == 1


def test_sample_key_follows_webdataset():
    assert rawtar.sample_key("abc.jpg") == ("abc", "jpg")
    assert rawtar.sample_key("dir/abc.seg.json") == ("dir/abc", "seg.json")
