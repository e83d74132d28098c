"""Stage 5 dedup: hashing, the faiss search, and the stage end to end on planted duplicates."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFilter

from pipeline.dedup import embed, mih, phash
from pipeline.dedup import stage as dedup
from pipeline import overlap
from tests.evalfixtures import (
    EVAL_SEEDS,
    PLANTED,
    jpeg_bytes,
    make_planted,
    pattern_image,
    web_copy,
    write_shard,
)

# ---- pure pieces ----------------------------------------------------------------------------------------

def test_copies_hash_close_and_other_images_far():
    original = phash.hash_image_bytes(jpeg_bytes(pattern_image(1)))[0]
    copy = phash.hash_image_bytes(web_copy(pattern_image(1)))[0]
    others = [phash.hash_image_bytes(jpeg_bytes(pattern_image(s)))[0] for s in range(100, 120)]
    assert phash.hamming(original, copy) <= dedup.DEFAULT_THRESHOLDS["phash"]
    assert min(phash.hamming(original, o) for o in others) > 2 * dedup.DEFAULT_THRESHOLDS["phash"]


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


@pytest.mark.parametrize("radius", [0, 2, 5, 8])
def test_multi_index_hash_equals_brute_force_on_many_hashes(radius):
    rng = np.random.default_rng(radius)
    db = rng.integers(0, 2**63, 20_000, dtype=np.uint64) * 2 + rng.integers(0, 2, 20_000, dtype=np.uint64)
    flips = [rng.choice(64, int(rng.integers(0, 11)), replace=False) for _ in range(300)]
    near = np.array([int(h) ^ sum(1 << int(b) for b in f) for h, f in zip(db[:300], flips)], dtype=np.uint64)
    queries = np.concatenate([near, db[300:310], rng.integers(0, 2**63, 50, dtype=np.uint64)])
    q, ids, d = mih.MultiIndexHash(db, radius).range_search(queries)
    brute = np.bitwise_count(queries[:, None] ^ db[None, :])
    assert set(zip(q.tolist(), ids.tolist(), d.tolist())) == {(i, j, int(brute[i, j])) for i, j in zip(*np.nonzero(brute <= radius))}
    with pytest.raises(ValueError, match="radius 9"):
        mih.MultiIndexHash(db, mih.MAX_RADIUS + 1)


@pytest.mark.parametrize("rows", [40, 3_000, 300_000])
@pytest.mark.parametrize("built, searched", [(8, 8), (8, 6), (8, 3), (6, 6), (6, 0), (2, 2), (0, 0)])
def test_multi_index_hash_at_any_radius_up_to_its_own_equals_brute_force(rows, built, searched):
    # every layout `plan` picks (few rows: narrow pieces; many: wide ones, some never probed at small radii), searched
    # at its own radius or below; planted neighbours at every distance 0..10
    rng = np.random.default_rng(rows + 10 * built + searched)
    db = rng.integers(0, 2**63, rows, dtype=np.uint64) * 2 + rng.integers(0, 2, rows, dtype=np.uint64)
    src = rng.integers(0, rows, 400)
    near = np.array([int(db[s]) ^ sum(1 << int(b) for b in rng.choice(64, i % 11, replace=False))
                     for i, s in enumerate(src)], dtype=np.uint64)
    queries = np.concatenate([near, rng.integers(0, 2**63, 100, dtype=np.uint64)])
    index = mih.MultiIndexHash(db, built)
    q, ids, d = index.range_search(queries, searched)
    brute = np.bitwise_count(queries[:, None] ^ db[None, :])
    expected = {(i, j, int(brute[i, j])) for i, j in zip(*np.nonzero(brute <= searched))}
    assert set(zip(q.tolist(), ids.tolist(), d.tolist())) == expected
    assert len(q) == len(expected)                          # each pair once, however many pieces found it
    assert sum(1 for i, s in enumerate(src) if i % 11 <= searched) <= len(expected)   # the planted ones at least
    with pytest.raises(ValueError, match="outside"):
        index.range_search(queries, built + 1)


def test_plan_narrows_the_pieces_for_few_rows_and_spends_flips_where_they_are_cheap():
    # by hand, from the cost model: 2.2M rows at r=8 need 3 wide pieces of 2 flips each (the plain pigeonhole);
    # at r=6, (2, 1, 1) suffices (sum >= 6 - 3 + 1); 100k rows at r=8: four 16-bit pieces with 2+1+1+1 flips
    assert mih.plan(2_200_000, 8) == ((22, 21, 21), (2, 2, 2))
    assert sorted(mih.plan(2_200_000, 6)[1]) == [1, 1, 2]
    assert mih.plan(100_000, 8) == ((16, 16, 16, 16), (2, 1, 1, 1))
    for rows in (10, 10_000, 1_000_000):
        for radius in range(mih.MAX_RADIUS + 1):
            widths, budgets = mih.plan(rows, radius)
            assert sum(widths) == 64 and max(widths) <= mih.MAX_WIDTH
            assert sum(budgets) >= radius - len(widths) + 1      # the pigeonhole condition: exact recall


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
    assert all(d["eval_set"] == "pets" and d["distance"] <= dedup.DEFAULT_THRESHOLDS["phash"] for d in decisions)

    kept = shard_keys(tmp_path / "dedup_shards")
    assert kept == sorted(f"u_other_{i:02d}" for i in range(17))
    assert manifest["counters"] == {"read": 22, "kept": 17, "rejected": {
        "eval_duplicate": 3, "missing_image": 1, "unreadable_image": 1}}
    assert manifest["dropped_per_eval_set"]["pets"] == {"samples": 3, "uids": sorted(PLANTED), "per_signal": {"phash": 3}}
    assert manifest["dropped_per_signal"] == {"phash": 3}
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


def index_of_plain_hashes(hashes: list[int], ids: list[str]) -> dedup.EvalIndex:
    """An eval index whose images have the given pHashes and random (far) other variants."""
    variants = np.random.default_rng(0).integers(0, 2**63, (len(hashes), len(phash.VARIANT_KINDS)), dtype=np.uint64)
    variants[:, 0] = hashes
    return dedup.EvalIndex(indexes=dedup.index_variants(variants, {"phash": 8}), eval_set=["e"] * len(ids),
                           image_id=ids, label=[0] * len(ids), sha256=[""] * len(ids), variants=variants)


@pytest.mark.parametrize("thresholds", [dict(dedup.DEFAULT_THRESHOLDS), {"phash": 8, "crop": 4, "overlay": 2},
                                        {"frame": 6, "reframe": 8}, {"flip": 10, "rotate": 3}])
def test_hash_pairs_per_group_index_equals_brute_force_over_the_searched_pairs(thresholds):
    # 200 eval images of random variants; 300 samples whose plain, frame or centre hash is some variant of some eval
    # image 0..10 bits off (and random otherwise): every (sample, eval image) pair some searched (shard hash, variant)
    # pair finds within its signal's threshold, reported as the first such signal, by brute force over all pairs
    rng = np.random.default_rng(len(thresholds))
    variants = rng.integers(0, 2**63, (200, len(phash.VARIANT_KINDS)), dtype=np.uint64) * 2 + 1
    rows = {c: rng.integers(0, 2**63, 300, dtype=np.uint64).tolist() for c in dedup.HASH_COLUMNS}
    rows["phash_trimmed"] = [h if i % 3 == 1 else None for i, h in enumerate(rows["phash_trimmed"])]
    for i in range(300):
        searched = [v for v in range(len(phash.VARIANT_KINDS)) if phash.signal_of(phash.QUERY_KINDS[i % 3], v) in thresholds]
        if searched:   # a copy of the kind some signal on would find
            rows[dedup.HASH_COLUMNS[i % 3]][i] = int(variants[i % 200, int(rng.choice(searched))]) ^ sum(
                1 << int(b) for b in rng.choice(64, i % 11, replace=False))
    eval_index = dedup.EvalIndex(indexes=dedup.index_variants(variants, thresholds), eval_set=["e"] * 200,
                                 image_id=[str(i) for i in range(200)], label=[0] * 200, sha256=[""] * 200,
                                 variants=variants)
    expected = {}
    for i in range(300):
        for k, column in enumerate(dedup.HASH_COLUMNS):
            if rows[column][i] is None:
                continue
            distances = np.bitwise_count(np.uint64(rows[column][i]) ^ variants)        # (eval images, variants)
            for e, v in zip(*np.nonzero(distances <= 10)):
                signal, d = phash.signal_of(phash.QUERY_KINDS[k], int(v)), int(distances[e, v])
                if signal in thresholds and d <= thresholds[signal]:
                    code = phash.SIGNAL_ORDER.index(signal)
                    expected[(i, int(e))] = min(expected.get((i, int(e)), (code, d)), (code, d))
    expected = {pair: (d, phash.SIGNAL_ORDER[c]) for pair, (c, d) in expected.items()}
    assert dedup.hash_pairs(rows, eval_index, thresholds) == expected
    assert len(expected) >= 60
    # each index is searched no wider than the signals that use it need
    limit = {k: max(thresholds.get(phash.signal_of(q, v) or "", -1) for q in phash.QUERY_KINDS
                    for v in columns) for k, (columns, _) in eval_index.indexes.items()}
    assert {k: getattr(index, "radius", None) for k, (_, index) in eval_index.indexes.items()} == \
        {k: r if r <= mih.MAX_RADIUS else None for k, r in limit.items()}


def test_nearest_marks_each_samples_closest_eval_image(planted):
    shard_dir = planted[2]
    table, _ = phash.hash_shard(str(shard_dir / "00000.tar"))
    hashes = [h for h in table["phash"].to_pylist() if h is not None]
    eval_index = index_of_plain_hashes([hashes[0], hashes[0] ^ 0b11], ["same", "two_bits_off"])
    rows = [d for d in dedup.match_shard(table, "s", eval_index, {"phash": 8}) if d["key"] == table["key"][0].as_py()]
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


# ---- the embedding signal (--embed-checkpoint) ------------------------------------------------------------

def bordered(image, frac: float = 0.10) -> bytes:
    """A white frame of `frac` of the side around the image, then an upscaled web copy (pHash moves ~20 bits)."""
    pad = int(image.width * frac)
    framed = Image.new("RGB", (image.width + 2 * pad, image.height + 2 * pad), "white")
    framed.paste(image, (pad, pad))
    return jpeg_bytes(framed.resize((200, 200)))


def cropped(image, frac: float = 0.30) -> bytes:
    cut = int(image.width * frac / 2)
    return jpeg_bytes(image.crop((cut, cut, image.width - cut, image.height - cut)).resize((200, 200)))


BORDER_AND_CROP = {"u_border": (2, bordered), "u_crop": (4, cropped)}   # key -> (eval seed, transform)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A tiny CLIP trained for 5 CPU steps on generated shapes (a few seconds): an encoder of ours, not a good one."""
    from train import train
    from demo.synthetic import write_shards
    root = tmp_path_factory.mktemp("tiny")
    write_shards(root / "shapes", "shapes", shards=1, per_shard=64, image_size=32, seed=1)
    config = str(Path(__file__).resolve().parent.parent / "train" / "configs" / "tiny.json")
    train.main(["--shards", str(root / "shapes" / "00000.tar"), "--out", str(root / "run"), "--config", config,
                "--steps", "5", "--batch-size", "32", "--warmup", "2", "--workers", "0", "--set", "run.threads=1",
                "--set", "data.shuffle_buffer=64", "--set", "data.shuffle_initial=16"])
    return str(root / "run" / "ckpt_latest.pt")


@pytest.fixture
def planted_border_and_crop(planted):
    """The planted set plus a third shard with a 10% border copy and a 30% crop copy of eval images."""
    tmp_path, eval_root, shard_dir = planted
    write_shard(shard_dir / "00002.tar", [(k, f(pattern_image(seed))) for k, (seed, f) in BORDER_AND_CROP.items()])
    return tmp_path, eval_root, shard_dir


def drop_signal_columns(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("signal", "cosine")} for r in rows]


def test_embedding_finds_border_and_crop_copies_that_phash_misses(planted_border_and_crop, tiny_checkpoint):
    tmp_path, eval_root, shard_dir = planted_border_and_crop
    encoder = embed.load_encoder(tiny_checkpoint, "cpu")
    eval_ids, eval_features = embed.embed_images(
        encoder, ((f"{c}/{s:04d}.jpg", jpeg_bytes(pattern_image(s))) for c, seeds in EVAL_SEEDS.items() for s in seeds))
    eval_row = {seed: eval_ids.index(f"{c}/{seed:04d}.jpg") for c, seeds in EVAL_SEEDS.items() for seed in seeds}
    copies = {k: embed.embed_images(encoder, [(k, f(pattern_image(seed)))])[1][0] for k, (seed, f) in BORDER_AND_CROP.items()}
    for k, (seed, f) in BORDER_AND_CROP.items():   # the premise: pHash does not find them
        assert phash.hamming(phash.hash_image_bytes(f(pattern_image(seed)))[0],
                             phash.hash_image_bytes(jpeg_bytes(pattern_image(seed)))[0]) > dedup.DEFAULT_THRESHOLDS["phash"]
    # this barely trained encoder is no good judge, so the threshold is set just low enough for both copies
    cos_threshold = min(float(copies[k] @ eval_features[eval_row[seed]]) for k, (seed, _) in BORDER_AND_CROP.items()) - 1e-3
    # the plain pHash signal only, so that the hashes miss the border copy too
    phash_only = run_dedup(tmp_path, eval_root, shard_dir, "off", "off_shards", "--signals", "phash")
    both = run_dedup(tmp_path, eval_root, shard_dir, "on", "on_shards", "--signals", "phash",
                     "--embed-checkpoint", tiny_checkpoint, "--embed-threshold", str(cos_threshold))

    decisions = pq.read_table(tmp_path / "on" / "decisions.parquet").to_pylist()
    for k, (seed, _) in BORDER_AND_CROP.items():
        row = next(d for d in decisions if d["key"] == k and d["eval_image_id"].endswith(f"{seed:04d}.jpg"))
        assert row["signal"] == dedup.EMBEDDING and row["cosine"] >= cos_threshold
        assert row["distance"] > dedup.DEFAULT_THRESHOLDS["phash"]
    assert set(BORDER_AND_CROP) <= set(both["dropped_per_eval_set"]["pets"]["uids"])

    # every embedding pair is what a brute-force cosine over all shard images gives (away from float ties)
    features = {}
    for path in sorted(shard_dir.glob("*.tar")):
        features.update(embed.shard_features(str(path), encoder, str(tmp_path / "check_cache")))
    keys = sorted(features)
    sims = np.stack([features[k] for k in keys]) @ eval_features.T
    expected = {(keys[i], eval_ids[j]) for i, j in zip(*np.nonzero(sims >= cos_threshold + 1e-5))}
    found = {(d["key"], d["eval_image_id"]) for d in decisions if d["signal"].endswith(dedup.EMBEDDING)}
    assert expected <= found
    assert all(abs(d["cosine"] - cos_threshold) < 1e-5 or (d["key"], d["eval_image_id"]) in expected
               for d in decisions if d["signal"].endswith(dedup.EMBEDDING))

    # the pHash side is untouched: its pairs are the off run's, now with a cosine
    old = pq.read_table(tmp_path / "off" / "decisions.parquet").to_pylist()
    assert drop_signal_columns([d for d in decisions if d["signal"] != dedup.EMBEDDING]) == drop_signal_columns(old)
    assert sum(both["dropped_per_signal"].values()) == both["counters"]["rejected"]["eval_duplicate"]
    assert both["dropped_per_signal"][dedup.EMBEDDING] >= 2
    assert both["counters"]["read"] == both["counters"]["kept"] + sum(both["counters"]["rejected"].values())
    assert both["settings"]["embed_checkpoint_sha256"] == embed.file_sha256(tiny_checkpoint)
    assert phash_only["dropped_per_signal"] == {"phash": 3}

    # the overlap report reads these decisions: the copies' sources count as overlap, the threshold is named
    report = overlap.run(["--dedup", str(tmp_path / "on"), "--out", str(tmp_path / "report"), "--examples", "1"])
    sources = {f"{c}/{s:04d}.jpg" for c, seeds in EVAL_SEEDS.items() for s in seeds
               if s in {seed for seed, _ in BORDER_AND_CROP.values()}}
    assert report["sets"]["pets"]["overlap_images"] >= len(sources)
    assert f"cosine >= {cos_threshold}" in (tmp_path / "report" / "overlap.md").read_text()


def test_without_the_flag_the_output_is_the_phash_output(planted_border_and_crop):
    tmp_path, eval_root, shard_dir = planted_border_and_crop
    manifest = run_dedup(tmp_path, eval_root, shard_dir)
    decisions = pq.read_table(tmp_path / "out" / "decisions.parquet").to_pylist()
    assert {d["cosine"] for d in decisions} == {None} and dedup.EMBEDDING not in manifest["dropped_per_signal"]
    assert manifest["settings"]["embed_checkpoint"] is None
    assert not (tmp_path / "out" / "cache" / "embed").exists()
    # the frame-trimmed hash finds the 10% border copy; the 30% crop is beyond every hash signal
    assert {d["key"]: d["signal"] for d in decisions} == {**{k: "phash" for k in PLANTED}, "u_border": "frame"}
    assert "u_crop" in shard_keys(tmp_path / "dedup_shards")
    plain = run_dedup(tmp_path, eval_root, shard_dir, "plain", "plain_shards", "--signals", "phash")
    assert {d["key"] for d in pq.read_table(tmp_path / "plain" / "decisions.parquet").to_pylist()} == set(PLANTED)
    assert plain["counters"]["rejected"]["eval_duplicate"] == 3


def framed_grey(inner: np.ndarray, sides: tuple[int, int, int, int], colour: int = 255) -> np.ndarray:
    left, top, right, bottom = sides
    out = np.full((inner.shape[0] + top + bottom, inner.shape[1] + left + right), colour, dtype=np.uint8)
    out[top:top + inner.shape[0], left:left + inner.shape[1]] = inner
    return out


def test_uniform_border_box_finds_frames_and_leaves_pictures_alone():
    picture = np.asarray(pattern_image(3, 40).convert("L"))
    assert phash.uniform_border_box(picture) is None
    # a frame on all sides, and letterboxing (top and bottom only), are peeled plus one blurred row
    assert phash.uniform_border_box(framed_grey(picture, (4, 4, 4, 4))) == (5, 5, 43, 43)
    assert phash.uniform_border_box(framed_grey(picture, (0, 6, 0, 6), colour=0)) == (0, 7, 40, 45)
    # a uniform strip on one side only (sky) is not a frame; nor is a frame that would leave too little
    assert phash.uniform_border_box(framed_grey(picture, (0, 8, 0, 0))) is None
    assert phash.uniform_border_box(framed_grey(picture[:8, :8], (10, 10, 10, 10))) is None
    assert phash.uniform_border_box(np.full((32, 32), 128, dtype=np.uint8)) is None   # a blank image


def test_framed_copy_hashes_near_its_source_after_trimming():
    source = pattern_image(7)
    data = bordered(source)
    (plain, trimmed, _), status = phash.image_hashes(data)
    original = phash.hash_image_bytes(jpeg_bytes(source))[0]
    assert status == phash.OK and phash.hamming(plain, original) > dedup.DEFAULT_THRESHOLDS["phash"]
    assert phash.hamming(trimmed, original) <= dedup.DEFAULT_THRESHOLDS["phash"]
    assert phash.image_hashes(jpeg_bytes(source))[0][1] is None


def test_embedding_rerun_equals_once_and_reads_the_cache(planted_border_and_crop, tiny_checkpoint):
    tmp_path, eval_root, shard_dir = planted_border_and_crop
    flags = ["--embed-checkpoint", tiny_checkpoint, "--embed-threshold", "0.99"]
    first = run_dedup(tmp_path, eval_root, shard_dir, "out", "dedup_shards", *flags)
    cache = tmp_path / "out" / "cache" / "embed"
    cached = {p: p.stat().st_mtime_ns for p in cache.rglob("*.parquet")}
    assert len(cached) == 3 + 1                                    # three shards, one eval set
    decisions = pq.read_table(tmp_path / "out" / "decisions.parquet")
    second = run_dedup(tmp_path, eval_root, shard_dir, "out", "dedup_shards", *flags)
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.parquet")} == cached
    assert second["counters"] == first["counters"]
    assert pq.read_table(tmp_path / "out" / "decisions.parquet").equals(decisions)
    again = run_dedup(tmp_path, eval_root, tmp_path / "dedup_shards", "out2", "dedup2", *flags)
    assert again["counters"]["rejected"] == {}


def test_embedding_from_an_open_clip_file_with_embed_model_decides_as_our_checkpoint(planted_border_and_crop,
                                                                                     tiny_checkpoint):
    tmp_path, eval_root, shard_dir = planted_border_and_crop
    import torch
    ours = torch.load(tiny_checkpoint, weights_only=True)
    theirs = tmp_path / "epoch_5.pt"        # open_clip's layout: DDP prefixes under "state_dict", no config
    torch.save({"epoch": 5, "state_dict": {f"module.{k}": v for k, v in ours["model"].items()}}, theirs)
    vision, text = ours["config"]["model"]["vision"], ours["config"]["model"]["text"]
    config = tmp_path / "tiny-oc.json"      # open_clip's model config of train/configs/tiny.json
    config.write_text(json.dumps({"embed_dim": 64, "vision_cfg": {
        "image_size": vision["image_size"], "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": text["context_length"], "width": 64, "heads": 2, "layers": 2}}))
    flags = ["--embed-threshold", "0.99", "--signals", "phash"]
    expected = run_dedup(tmp_path, eval_root, shard_dir, "a", "a_shards", "--embed-checkpoint", tiny_checkpoint, *flags)
    got = run_dedup(tmp_path, eval_root, shard_dir, "b", "b_shards", "--embed-checkpoint", str(theirs),
                    "--embed-model", str(config), *flags)
    assert got["counters"] == expected["counters"] and got["settings"]["embed_model"] == str(config)
    assert pq.read_table(tmp_path / "b" / "decisions.parquet").equals(pq.read_table(tmp_path / "a" / "decisions.parquet"))


@pytest.mark.parametrize("content, message", [(None, "no such file"), (b"not a checkpoint", "not a readable PyTorch weights file")])
def test_bad_checkpoint_is_one_clear_error(planted, content, message):
    tmp_path, eval_root, shard_dir = planted
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SystemExit, match=rf"^dedup: --embed-checkpoint .*model.pt.* {message}"):
        run_dedup(tmp_path, eval_root, shard_dir, "out", "dedup_shards", "--embed-checkpoint", str(path))
    assert not (tmp_path / "dedup_shards").exists()


def test_cosine_search_is_exact_and_inclusive():
    rng = np.random.default_rng(0)
    db = rng.normal(size=(50, 16)).astype(np.float32)
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    queries = np.concatenate([db[:10] + 0.1 * rng.normal(size=(10, 16)).astype(np.float32), db[10:12]])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    sims = queries @ db.T
    top = np.sort(sims.ravel())[-16:-14]
    threshold = float(top.mean())                                 # between two cosines: no float ties
    rows, hits = embed.cosine_pairs(embed.build_cosine_index(db), queries, threshold)
    assert set(zip(rows.tolist(), hits.tolist())) == set(zip(*np.nonzero(sims >= threshold)))
    assert len(rows) == 15
    exact = np.eye(4, dtype=np.float32)                           # cosines exactly 1.0 and 0.0
    rows, hits = embed.cosine_pairs(embed.build_cosine_index(exact), exact[[2]], 1.0)
    assert (rows.tolist(), hits.tolist()) == ([0], [2])           # ">=": a cosine equal to the threshold counts


# ---- the robust signals: mirrored, cropped, re-framed, overlaid and rotated copies ------------------------

def edited_copy(image: Image.Image, edit: str) -> bytes:
    """A web copy (enlarged to 200 px, JPEG q85) of `image` after one hand-written edit."""
    big = image.resize((200, 200), Image.Resampling.BICUBIC)
    if edit == "mirror":
        big = big.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    elif edit == "crop_10pct":                      # 10% of each side cut, all from the right and the bottom
        big = big.crop((0, 0, 180, 180)).resize((200, 200), Image.Resampling.BICUBIC)
    elif edit == "caption_bars":                    # black bars over the top and bottom 10%, one with white text
        draw = ImageDraw.Draw(big)
        draw.rectangle((0, 0, 200, 20), fill="black")
        draw.rectangle((0, 180, 200, 200), fill="black")
        draw.text((5, 182), "www.example.com", fill="white", font_size=16)
    elif edit == "rotate_5deg":
        big = big.rotate(5, Image.Resampling.BICUBIC, fillcolor="white")
    elif edit == "reframe":                         # on a blurred, enlarged copy of itself, 10% margins
        canvas = big.resize((240, 240)).filter(ImageFilter.GaussianBlur(10))
        canvas.paste(big, (20, 20))
        big = canvas.resize((200, 200), Image.Resampling.BICUBIC)
    return jpeg_bytes(big, 85)


# key -> (eval seed, edit, the signal that must report it)
EDITED = {"e_mirror": (6, "mirror", "flip"), "e_crop": (3, "crop_10pct", "crop"),
          "e_caption": (4, "caption_bars", "overlay"), "e_rotate": (5, "rotate_5deg", "rotate"),
          "e_reframe": (2, "reframe", "reframe")}


def test_mirrored_frequencies_are_the_mirror_images_frequencies():
    pixels = phash.grey_pixels(pattern_image(11, 32))
    flipped = np.ascontiguousarray(pixels[:, ::-1])
    assert np.allclose(phash.mirrored(phash.low_frequencies(pixels)), phash.low_frequencies(flipped))
    variants = phash.variant_hashes(pixels)
    assert variants[0] == phash.phash_of_image(Image.fromarray(pixels))                  # variant 0: the pHash
    assert variants[1] == phash.phash_of_image(Image.fromarray(flipped))                 # variant 1: its mirror's


def test_matrix_resize_is_pils_lanczos():
    image = pattern_image(12, 70).convert("L")
    box = (7.0, 3.5, 63.0, 59.5)
    ours = phash.lanczos_weights(70, box[1], box[3]) @ phash.grey_pixels(image) @ phash.lanczos_weights(70, box[0], box[2]).T
    theirs = np.asarray(image.resize((32, 32), Image.Resampling.LANCZOS, box=box), dtype=np.float64)
    assert np.abs(ours - theirs).max() <= 2.0          # PIL rounds to 8 bits between its two passes


def variant(kind: str, side: float = 1.0, x: float = 0.5, y: float = 0.5, degrees: float = 0.0, mirrored=False) -> int:
    return 2 * phash.GEOMETRY.index((kind, side, x, y, degrees)) + int(mirrored)


# edit -> (the copy's hash, the variant of its source's hashes that must be near it), by hand
EXPECTED_PAIR = {"mirror": (0, variant("phash", mirrored=True)), "crop_10pct": (0, variant("crop", 0.9, 0.0, 0.0)),
                 "caption_bars": (2, variant("centre", 0.8)), "rotate_5deg": (2, variant("rotate", 0.8, degrees=3.0)),
                 "reframe": (2, variant("phash"))}


@pytest.mark.parametrize("key", sorted(EDITED))
def test_each_edit_is_beyond_phash_and_met_by_its_signal(key):
    seed, edit, signal = EDITED[key]
    source = phash.eval_image_hashes(jpeg_bytes(pattern_image(seed)))[0]
    copy, status = phash.image_hashes(edited_copy(pattern_image(seed), edit))
    query, v = EXPECTED_PAIR[edit]
    assert status == phash.OK and phash.signal_of(phash.QUERY_KINDS[query], v) == signal
    assert phash.hamming(copy[query], source[v]) <= dedup.DEFAULT_THRESHOLDS[signal]
    # the premise: the plain pHash alone does not find it
    assert phash.hamming(copy[0], source[0]) > dedup.DEFAULT_THRESHOLDS["phash"]
    for other in (1, 100, 101):   # and no hash of it comes near any variant of another image
        if other != seed:
            others = phash.eval_image_hashes(jpeg_bytes(pattern_image(other)))[0]
            assert min(phash.hamming(h, o) for h in copy if h is not None for o in others) > 8


def test_edited_copies_are_dropped_and_counted_per_signal_and_eval_set(planted):
    tmp_path, eval_root, shard_dir = planted
    write_shard(shard_dir / "00002.tar", [(k, edited_copy(pattern_image(seed), edit))
                                          for k, (seed, edit, _) in EDITED.items()])
    manifest = dedup.run(["--shards", str(shard_dir), "--eval", f"pets={eval_root}", "--out", str(tmp_path / "out"),
                          "--workers", "1"])
    decisions = pq.read_table(tmp_path / "out" / "decisions.parquet").to_pylist()
    nearest = {d["key"]: (d["eval_image_id"], d["signal"]) for d in decisions if d["nearest"]}
    assert nearest == {"u_dup_a": ("cat/0001.jpg", "phash"), "u_dup_b": ("dog/0005.jpg", "phash"),
                       "u_dup_c": ("dog/0006.jpg", "phash"), "e_mirror": ("dog/0006.jpg", "flip"),
                       "e_crop": ("cat/0003.jpg", "crop"), "e_caption": ("dog/0004.jpg", "overlay"),
                       "e_rotate": ("dog/0005.jpg", "rotate"), "e_reframe": ("cat/0002.jpg", "reframe")}
    per_signal = {"phash": 3, "flip": 1, "crop": 1, "overlay": 1, "rotate": 1, "reframe": 1}
    assert manifest["dropped_per_signal"] == per_signal
    assert manifest["dropped_per_eval_set"]["pets"]["per_signal"] == per_signal
    assert manifest["counters"] == {"read": 27, "kept": 17, "rejected": {
        "eval_duplicate": 8, "missing_image": 1, "unreadable_image": 1}}
    # decisions only: no shards are written unless asked (--out-shards)
    assert manifest["out_shards"] is None and manifest["settings"]["out_shards"] is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cache", "decisions.parquet", "dropped.parquet",
                                                                     "manifest.json"]
