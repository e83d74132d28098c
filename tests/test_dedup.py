"""Stage 5 dedup: hashing, the faiss search, and the stage end to end on planted duplicates."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import dedup, phash
from tests.evalfixtures import (
    PLANTED,
    jpeg_bytes,
    make_planted,
    pattern_image,
    web_copy,
)

# ---- pure pieces ----------------------------------------------------------------------------------------

def test_copies_hash_close_and_other_images_far():
    original = phash.hash_image_bytes(jpeg_bytes(pattern_image(1)))[0]
    copy = phash.hash_image_bytes(web_copy(pattern_image(1)))[0]
    others = [phash.hash_image_bytes(jpeg_bytes(pattern_image(s)))[0] for s in range(100, 120)]
    assert phash.hamming(original, copy) <= dedup.DEFAULT_THRESHOLD
    assert min(phash.hamming(original, o) for o in others) > 2 * dedup.DEFAULT_THRESHOLD


@pytest.mark.parametrize("seed, size, mode", [(1, 96, "RGB"), (2, 300, "RGB"), (3, 32, "L"), (4, 57, "RGB")])
def test_phash_equals_imagehash(seed, size, mode):
    image = pattern_image(seed, size).convert(mode)
    assert phash.phash_of_image(image) == phash.phash_reference(image)


@pytest.mark.parametrize("size", [32, 96, 256, 333])
def test_simplejpeg_path_equals_pil_draft_mode(size, monkeypatch):
    pytest.importorskip("simplejpeg")
    data = jpeg_bytes(pattern_image(size, size))
    fast = phash.hash_image_bytes(data)
    monkeypatch.setattr(phash, "simplejpeg", None)
    assert phash.hash_image_bytes(data) == fast


def test_draft_decode_hash_is_near_full_decode():
    data = jpeg_bytes(pattern_image(7, size=512))
    full, draft = phash.hash_image_bytes(data, draft=False)[0], phash.hash_image_bytes(data, draft=True)[0]
    assert phash.hamming(full, draft) <= 2


@pytest.mark.parametrize("data, reason", [
    (b"not an image", phash.UNREADABLE_IMAGE),
    (jpeg_bytes(pattern_image(1))[:200], phash.UNREADABLE_IMAGE),      # truncated JPEG
    (b"", phash.UNREADABLE_IMAGE),
])
def test_bad_image_bytes_are_a_reason_not_an_exception(data, reason):
    assert phash.hash_image_bytes(data) == (None, reason)


def test_binary_codes_keep_hamming_distance():
    a, b = 0x0123456789ABCDEF, 0x0123456789ABCDEF ^ 0b1011
    codes = phash.to_binary_codes(np.array([a, b], dtype=np.uint64))
    assert codes.shape == (2, 8)
    assert int(np.unpackbits(codes[0] ^ codes[1]).sum()) == 3


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=40),
       st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=40), st.integers(0, 12))
def test_range_search_equals_brute_force(db, queries, threshold):
    # half the queries are db entries with a few bits flipped, so matches exist at every distance
    queries = queries + [h ^ ((1 << (i % 11)) - 1) for i, h in enumerate(db)]
    index = dedup.build_binary_index(np.array(db, dtype=np.uint64), threshold)
    q, h, d = dedup.range_search(index, np.array(queries, dtype=np.uint64), threshold)
    found = set(zip(q.tolist(), h.tolist(), d.tolist()))
    expected = {(i, j, phash.hamming(x, y)) for i, x in enumerate(queries) for j, y in enumerate(db)
                if phash.hamming(x, y) <= threshold}
    assert found == expected


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=30), st.lists(st.integers(0, 2**64 - 1), max_size=30),
       st.integers(0, 10))
def test_filtering_twice_equals_once(eval_hashes, shard_hashes, threshold):
    # shard hashes near the eval ones too, so that something is dropped
    shard_hashes = shard_hashes + [h ^ (1 << (i % 64)) for i, h in enumerate(eval_hashes)]
    index = dedup.build_binary_index(np.array(eval_hashes, dtype=np.uint64), threshold)

    def keep(hashes):
        dropped = set(dedup.range_search(index, np.array(hashes, dtype=np.uint64), threshold)[0].tolist())
        return [h for i, h in enumerate(hashes) if i not in dropped]

    once = keep(shard_hashes)
    assert keep(once) == once


# ---- the stage ------------------------------------------------------------------------------------------

@pytest.fixture
def planted(tmp_path):
    return (tmp_path, *make_planted(tmp_path))


def run_dedup(tmp_path, eval_root, shard_dir, out="out", out_shards="dedup_shards", *extra):
    return dedup.run(["--shards", str(shard_dir), "--eval", f"pets={eval_root}", "--out", str(tmp_path / out),
                      "--out-shards", str(tmp_path / out_shards), "--workers", "1", "--samples-per-shard", "8",
                      *extra])


def shard_keys(folder) -> list[str]:
    keys = []
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            keys += sorted({m.name.split(".")[0] for m in tar.getmembers()})
    return keys


def test_planted_duplicates_are_found_and_only_they_are_removed(planted):
    tmp_path, eval_root, shard_dir = planted
    manifest = run_dedup(tmp_path, eval_root, shard_dir)

    decisions = pq.read_table(tmp_path / "out" / "decisions.parquet").to_pylist()
    assert {d["key"]: d["eval_image_id"] for d in decisions} == \
        {"u_dup_a": "cat/0001.jpg", "u_dup_b": "dog/0005.jpg", "u_dup_c": "dog/0006.jpg"}
    assert all(d["eval_set"] == "pets" and d["distance"] <= dedup.DEFAULT_THRESHOLD for d in decisions)

    kept = shard_keys(tmp_path / "dedup_shards")
    assert kept == sorted(f"u_other_{i:02d}" for i in range(17))
    assert manifest["counters"] == {"read": 22, "kept": 17, "rejected": {
        "eval_duplicate": 3, "missing_image": 1, "unreadable_image": 1}}
    assert manifest["dropped_per_eval_set"]["pets"] == {"samples": 3, "uids": sorted(PLANTED)}
    assert manifest["eval_sets"]["pets"]["images_with_training_duplicate"] == 3
    assert [s["samples"] for s in manifest["out_shards"]] == [8, 8, 1]


def test_output_shards_keep_format_and_metadata(planted):
    tmp_path, eval_root, shard_dir = planted
    run_dedup(tmp_path, eval_root, shard_dir)
    with tarfile.open(shard_dir / "00000.tar") as src, tarfile.open(tmp_path / "dedup_shards" / "00000.tar") as out:
        original = {m.name: src.extractfile(m).read() for m in src.getmembers()}
        copied = {m.name: out.extractfile(m).read() for m in out.getmembers()}
    assert {n.split(".")[1] for n in copied} == {"jpg", "txt", "json"}
    assert all(original[n] == data for n, data in copied.items() if n in original)   # byte for byte
    rows = pq.read_table(tmp_path / "dedup_shards" / "00000.parquet").to_pylist()
    assert rows[0]["uid"] == rows[0]["key"] and rows[0]["caption"] == f"caption of {rows[0]['key']}"
    stats = json.loads((tmp_path / "dedup_shards" / "00000_stats.json").read_text())
    assert stats["successes"] == stats["count"] == 8


def test_rerun_equals_once_and_dedup_of_dedup_drops_nothing(planted):
    tmp_path, eval_root, shard_dir = planted
    first = run_dedup(tmp_path, eval_root, shard_dir)
    first_shards = {p.name: p.read_bytes() for p in (tmp_path / "dedup_shards").iterdir()}
    cached = sorted((tmp_path / "out" / "cache" / "shards").iterdir())
    second = run_dedup(tmp_path, eval_root, shard_dir)
    assert second["counters"] == first["counters"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "dedup_shards").iterdir()} == first_shards
    assert sorted((tmp_path / "out" / "cache" / "shards").iterdir()) == cached     # served from the cache

    again = run_dedup(tmp_path, eval_root, tmp_path / "dedup_shards", "out2", "dedup2")
    assert again["counters"] == {"read": 17, "kept": 17, "rejected": {}}
    assert shard_keys(tmp_path / "dedup2") == shard_keys(tmp_path / "dedup_shards")


def test_truncated_shard_is_counted_not_fatal(planted):
    tmp_path, eval_root, shard_dir = planted
    data = (shard_dir / "00001.tar").read_bytes()
    (shard_dir / "00001.tar").write_bytes(data[: len(data) // 2])
    manifest = run_dedup(tmp_path, eval_root, shard_dir)
    assert str(shard_dir / "00001.tar") in manifest["shard_errors"]
    assert manifest["counters"]["read"] < 22


@pytest.mark.parametrize("make_bad, message", [
    (lambda root: [p.unlink() for p in root.rglob("*.jpg")], "no images"),
    (lambda root: None, "no class-name file"),
])
def test_bad_eval_sets_are_one_clear_line(planted, make_bad, message):
    tmp_path, eval_root, shard_dir = planted
    make_bad(eval_root)
    spec = eval_root if message == "no images" else tmp_path / "missing.csv"
    with pytest.raises(SystemExit, match=rf"^dedup: .*{message}"):
        dedup.run(["--shards", str(shard_dir), "--eval", f"x={spec}", "--out", str(tmp_path / "o"),
                   "--out-shards", str(tmp_path / "s"), "--workers", "1"])


def test_missing_csv_classnames_and_missing_classname_file(planted, tmp_path):
    _, _, shard_dir = planted
    csv = tmp_path / "digits.csv"
    csv.write_text(",".join(["0"] * 784 + ["3"]) + "\n")
    base = ["--shards", str(shard_dir), "--out", str(tmp_path / "o"), "--out-shards", str(tmp_path / "s"),
            "--workers", "1"]
    with pytest.raises(SystemExit, match=r"^dedup: .*no class-name file"):
        dedup.run(base + ["--eval", f"digits={csv}"])
    with pytest.raises(SystemExit, match=r"^dedup: class-name file .*nope.json not found"):
        dedup.run(base + ["--eval", f"digits={csv}", "--classnames", f"digits={tmp_path / 'nope.json'}"])
    with pytest.raises(SystemExit, match=r"^dedup: .*label 3, but there are 2 class names"):
        dedup.run(base + ["--eval", f"digits={csv}", "--classnames", "digits=zero,one"])


def test_refuses_to_overwrite_the_input_shards(planted):
    tmp_path, eval_root, shard_dir = planted
    with pytest.raises(SystemExit, match="^dedup: --out-shards .* holds the input shards"):
        run_dedup(tmp_path, eval_root, shard_dir, "out", "shards")


@pytest.mark.slow
def test_worker_processes_give_the_same_result(planted):
    tmp_path, eval_root, shard_dir = planted
    inline = run_dedup(tmp_path, eval_root, shard_dir)
    pooled = dedup.run(["--shards", str(shard_dir), "--eval", f"pets={eval_root}", "--out", str(tmp_path / "p"),
                        "--out-shards", str(tmp_path / "ps"), "--workers", "2", "--samples-per-shard", "8"])
    assert pooled["counters"] == inline["counters"]
    assert pq.read_table(tmp_path / "p" / "decisions.parquet").equals(
        pq.read_table(tmp_path / "out" / "decisions.parquet").replace_schema_metadata(None))


def test_nearest_marks_each_samples_closest_eval_image(planted):
    shard_dir = planted[2]
    table, _ = phash.hash_shard(str(shard_dir / "00000.tar"))
    hashes = [h for h in table["phash"].to_pylist() if h is not None]
    eval_index = dedup.EvalIndex(index=dedup.build_binary_index(np.array([hashes[0], hashes[0] ^ 0b11], dtype=np.uint64), 8),
                                 eval_set=["e", "e"], image_id=["same", "two_bits_off"], label=[0, 0], sha256=["", ""])
    rows = [d for d in dedup.match_shard(table, "s", eval_index, 8) if d["key"] == table["key"][0].as_py()]
    assert {(d["eval_image_id"], d["distance"], d["nearest"]) for d in rows} == {("same", 0, True), ("two_bits_off", 2, False)}


def test_eval_set_without_a_readable_image_is_one_clear_error(planted):
    tmp_path, eval_root, shard_dir = planted
    for p in eval_root.rglob("*.jpg"):
        p.write_bytes(b"not a jpeg")
    with pytest.raises(SystemExit, match=r"^dedup: pets: none of its 6 images could be decoded"):
        run_dedup(tmp_path, eval_root, shard_dir)


def test_unreadable_eval_images_are_counted(planted):
    tmp_path, eval_root, shard_dir = planted
    (eval_root / "cat" / "9999.jpg").write_bytes(b"\xff\xd8 truncated")
    manifest = run_dedup(tmp_path, eval_root, shard_dir)
    summary = manifest["eval_sets"]["pets"]
    assert (summary["images"], summary["hashed"], summary["unreadable"]) == (7, 6, {"unreadable_image": 1})
    assert manifest["counters"]["rejected"]["eval_duplicate"] == 3
