"""bench/bench_dedup.py's calibration pieces on hand-made numbers and tiny images (the full run is `make bench`)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bench import bench_dedup as b
from pipeline.dedup import phash
from tests.evalfixtures import jpeg_bytes, pattern_image

NEVER = b.NEVER


def close_of(source: list[list[int]], other: list[list[int]], negative: list[list[int]]) -> dict:
    as_array = lambda rows: np.array(rows, dtype=np.uint8)   # noqa: E731
    return {"source": as_array(source), "other": as_array(other), "negative": as_array(negative)}


def test_precision_and_recall_of_the_rule_any_signal_within_its_limit():
    s = len(b.SIGNALS)
    row = lambda **d: [d.get(name, NEVER) for name in b.SIGNALS]   # noqa: E731
    close = close_of(
        source=[row(phash=4), row(crop=6), row(crop=8), row()],          # positives: to their source
        other=[row(), row(), row(), row(rotate=2)],                       # ... and to other eval images
        negative=[row(), row(overlay=8), row(phash=10), row()])           # negatives: to anything
    limits = np.array([8 if n in ("phash", "overlay", "rotate") else 6 if n == "crop" else -1 for n in b.SIGNALS])
    r = b.pr_of(close, limits)
    # TP: positives 0 (phash 4 <= 8) and 1 (crop 6 <= 6); positive 2 misses (crop 8 > 6); positive 3 meets
    # only another image (FP); negative 1 meets by overlay (FP); negative 2 at 10 bits does not
    assert (r["tp"], r["fp"], r["recall"], r["precision"]) == (2, 2, 0.5, 0.5)
    assert b.first_signals(close, limits) == {"phash": 1, "crop": 1}
    assert b.pr_of(close, np.full(s, -1))["tp"] == 0                     # every signal off: nothing meets


def test_tune_keeps_precision_and_prefers_every_edit_covered():
    row = lambda **d: [d.get(name, NEVER) for name in b.SIGNALS]   # noqa: E731
    # edit "hflip": found only by flip at 6; a negative sits at crop 4: crops must stay below 4 or go off
    close = {"hflip": close_of([row(flip=6), row(flip=6)], [row(), row()], [row(crop=4), row()]),
             "crop_10pct": close_of([row(crop=2), row(crop=2)], [row(), row()], [row(), row()])}
    thresholds, result = b.tune(close)
    assert thresholds["flip"] >= 6 and thresholds["crop"] == 2 and result["pooled"]["precision"] == 1.0
    assert result["pooled"]["recall"] == 1.0


def test_false_positives_are_counted_per_first_signal_and_per_negative_image():
    row = lambda **d: [d.get(name, NEVER) for name in b.SIGNALS]   # noqa: E731
    limits = b.limits_of({"phash": 6, "crop": 6, "overlay": 8})
    # negative 0 meets an eval image under both edits (phash first, though crop meets too), negative 1 once by
    # overlay; a positive of "blur" misses its source and meets another image
    close = {"blur": close_of([row(phash=2), row()], [row(), row(crop=4)], [row(phash=6, crop=2), row(overlay=8)]),
             "hflip": close_of([row(flip=2)], [row()], [row(crop=6), row(overlay=10)])}
    fps = b.false_positives(close, limits)
    assert fps["by_signal"] == {"phash": 1, "crop": 1, "overlay": 1, "positive meeting another image": 1}
    assert (fps["negatives"], fps["negative_fps"], fps["from_top_6_negatives"]) == (2, 3, 3)
    assert b.pr_of(close["blur"], limits)["fp"] + b.pr_of(close["hflip"], limits)["fp"] == 4


def test_tune_asks_the_tuning_half_for_precision_above_the_target():
    row = lambda **d: [d.get(name, NEVER) for name in b.SIGNALS]   # noqa: E731
    # 150 positives found by phash at 6 (100 of them at 4); one negative at phash 6: precision 150/151 = 0.993 at 6
    # bits passes MIN_PRECISION but not TUNE_PRECISION; at 4 bits, 100/100
    pos = [row(phash=4)] * 100 + [row(phash=6)] * 50
    close = {"blur": close_of(pos, [row()] * 150, [row(phash=6)] + [row()] * 149)}
    assert b.MIN_PRECISION < b.pr_of(close["blur"], b.limits_of({"phash": 6}))["precision"] < b.TUNE_PRECISION
    thresholds, result = b.tune(close)
    assert thresholds["phash"] == 4 and result["pooled"]["precision"] == 1.0


def test_signal_distances_are_the_smallest_over_the_signals_pairs():
    variants = np.array([phash.variant_hashes(phash.grey_pixels(pattern_image(s, 32))) for s in (1, 2)],
                        dtype=np.uint64)
    mirrored = jpeg_bytes(pattern_image(1).transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((256, 256)))
    signature = phash.image_hashes(mirrored)[0]
    d = b.signal_distances([signature], variants)
    flip = b.SIGNALS.index("flip")
    # by hand: the plain hash against image 1's mirrored pHash (variant 1)
    assert d[0, flip, 0] == phash.hamming(signature[0], int(variants[0, 1]))
    if signature[1] is None:   # no frame found: the frame signal cannot see this copy
        assert d[0, b.SIGNALS.index("frame"), 0] == NEVER


@pytest.mark.parametrize("name", sorted(b.EDITS))
def test_every_edit_makes_a_decodable_copy(name):
    copy = b.web_copy(name, 3, jpeg_bytes(pattern_image(5, 32)))
    with Image.open(io.BytesIO(copy)) as im:
        assert im.format == "JPEG" and im.size == ((32, 32) if name == "recompress_q20" else (256, 256))


def test_scale_bench_checks_its_searches_against_brute_force(tmp_path, monkeypatch):
    from bench import bench_dedup_scale, projection, report
    monkeypatch.setattr(report, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(report, "BENCHMARKS", tmp_path / "BENCHMARKS.md")   # keep the real one as it is
    r = bench_dedup_scale.main(["--rows", "3000", "--queries", "600", "--eval-images", "300", "--samples", "2000"])
    index, search = r["index"], r["stage_search"]
    assert index["exact"] and index["r8"]["planted_missed"] == 0 and index["r6"]["planted_missed"] == 0
    assert index["r8"]["planted_within"] == 60 and 0 < index["r6"]["planted_within"] < 60
    assert search["exact"] and search["samples"] == 2000 and search["pairs"] > 0
    assert set(search["indexes"]) == {"phash", "crop", "centre+rotate"}        # the default thresholds' groups
    written = (tmp_path / "BENCHMARKS.md").read_text()
    assert "<!-- bench:dedup_scale -->" in written and "not run (needs `--data`" in written
    # the projection takes dedup's rate from the largest eval index measured end to end
    small = {"stage": {"marginal_samples_per_cpu_s": 2500.0, "samples_per_cpu_s": 2000.0}}
    assert projection.dedup_rate(small, r)[0] == 2500.0
    large = {"stage": {"marginal_samples_per_cpu_s": 3000.0, "eval_images": 50_000, "index_rows": 2_200_000}}
    assert projection.dedup_rate(small, large) == (3000.0, "samples/s per core, `dedup` end to end marginal against "
                                                   "50,000 eval images = 2,200,000 hashes (every default signal, "
                                                   "decisions only; bench_dedup_scale)")
