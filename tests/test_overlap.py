"""The overlap report: statistics against hand-computed values, and the report on a tiny planted case."""

from __future__ import annotations

import json
import math

import pytest

from pipeline.dedup import stage as dedup
from pipeline import overlap
from tests.evalfixtures import make_planted

# ---- statistics, by hand -------------------------------------------------------------------------------

@pytest.mark.parametrize("k, n, p, expected", [
    (3, 3, 0.5, 1 / 8),                    # all three heads
    (2, 3, 0.5, 4 / 8),                    # 3 ways to get two + 1 way to get three, over 8
    (9, 10, 0.5, 11 / 1024),               # C(10,9) + C(10,10) = 11 of 1024
    (3, 3, 1 / 3, 1 / 27),
    (0, 5, 0.9, 1.0),                      # P(X >= 0) = 1
    (1, 4, 0.25, 1 - 0.75 ** 4),           # 1 - P(X = 0)
])
def test_binomial_tail(k, n, p, expected):
    assert overlap.binomial_tail(k, n, p) == pytest.approx(expected, rel=1e-12)


def test_clopper_pearson_edges_have_closed_forms():
    # k = 0: upper = 1 - (tail)^(1/n); k = n: lower = (tail)^(1/n), tail = (1 - 0.995) / 2
    tail = 0.0025
    assert overlap.clopper_pearson(0, 10) == (0.0, pytest.approx(1 - tail ** (1 / 10)))
    assert overlap.clopper_pearson(10, 10) == (pytest.approx(tail ** (1 / 10)), 1.0)
    assert overlap.clopper_pearson(0, 0) == (0.0, 1.0)


def test_clopper_pearson_textbook_value():
    # the exact 95% interval of 5/10 is [0.1871, 0.8129] (e.g. R's binom.test(5, 10))
    lower, upper = overlap.clopper_pearson(5, 10, confidence=0.95)
    assert (round(lower, 4), round(upper, 4)) == (0.1871, 0.8129)
    # and a 99.5% interval is wider and contains it
    wide = overlap.clopper_pearson(5, 10)
    assert wide[0] < lower and wide[1] > upper


def test_bonferroni_multiplies_and_caps():
    assert overlap.bonferroni({"a": 0.01, "b": 0.4, "c": 0.02}) == {"a": 0.03, "b": 1.0, "c": pytest.approx(0.06)}


def test_subset_accuracies_by_hand():
    correct = {"a": True, "b": True, "c": True, "d": True, "e": False, "f": False}
    result = overlap.subset_accuracies(correct, overlap_ids={"a", "b", "c"})
    assert result["overlap"]["accuracy"] == 1.0 and result["clean"]["accuracy"] == pytest.approx(1 / 3)
    assert result["all_minus_clean"] == pytest.approx(4 / 6 - 1 / 3)
    assert result["p_value"] == pytest.approx(1 / 27)          # 3 of 3 correct when Clean says 1/3


def test_no_overlap_means_no_test():
    result = overlap.subset_accuracies({"a": True, "b": False}, overlap_ids=set())
    assert result["p_value"] is None and result["overlap"]["n"] == 0 and result["all_minus_clean"] == 0


# ---- the report --------------------------------------------------------------------------------------------

@pytest.fixture
def deduped(tmp_path):
    eval_root, shard_dir = make_planted(tmp_path)
    digits = tmp_path / "digits.csv"                            # a second set nothing in the shards copies
    digits.write_text("\n".join(",".join(["0"] * 400 + ["255"] * 384 + [str(i)]) for i in range(2)) + "\n")
    dedup.run(["--shards", str(shard_dir), "--eval", f"pets={eval_root}", "--eval", f"digits={digits}",
               "--classnames", "digits=zero,one", "--out", str(tmp_path / "dedup"),
               "--out-shards", str(tmp_path / "clean_shards"), "--workers", "1"])
    return tmp_path


def write_predictions(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_report_on_a_tiny_case(deduped):
    tmp_path = deduped
    overlap_ids = {"cat/0001.jpg", "dog/0005.jpg", "dog/0006.jpg"}
    clean_correct = {"cat/0002.jpg"}
    rows = [{"eval_set": "pets", "image_id": i, "label": 0, "pred": 0 if (i in overlap_ids or i in clean_correct) else 1}
            for i in ["cat/0001.jpg", "cat/0002.jpg", "cat/0003.jpg", "dog/0004.jpg", "dog/0005.jpg", "dog/0006.jpg"]]
    rows += [{"eval_set": "digits", "image_id": "row0", "label": 0, "pred": 0, "correct": True},
             {"eval_set": "digits", "image_id": "row9", "label": 0, "pred": 0}]          # unknown image: counted
    preds = write_predictions(tmp_path / "preds.jsonl", rows)
    out = tmp_path / "report"
    report = overlap.run(["--dedup", str(tmp_path / "dedup"), "--predictions", str(preds), "--out", str(out)])

    pets, digits = report["sets"]["pets"], report["sets"]["digits"]
    assert (pets["images"], pets["overlap_images"], pets["overlap_pct"]) == (6, 3, 50.0)
    assert (digits["images"], digits["overlap_images"], digits["overlap_pct"]) == (2, 0, 0.0)
    assert report["summary"] == {"sets": 2, "median_overlap_pct": 25.0, "mean_overlap_pct": 25.0,
                                 "zero_overlap_sets": ["digits"]}
    acc = pets["accuracy"]
    assert (acc["all"]["correct"], acc["clean"]["correct"], acc["overlap"]["correct"]) == (4, 1, 3)
    assert acc["p_value"] == pytest.approx(1 / 27) and acc["p_bonferroni"] == pytest.approx(1 / 27)  # one set tested
    assert acc["significant"] is True
    assert digits["accuracy"]["images_without_prediction"] == 1 and digits["accuracy"]["unknown_predictions"] == 1
    assert "p_bonferroni" not in digits["accuracy"]

    assert json.loads((out / "overlap.json").read_text())["summary"]["zero_overlap_sets"] == ["digits"]
    md = (out / "overlap.md").read_text()
    assert "| pets | 6 | 3 | 50.00 | 3 |" in md and "| digits | 2 | 0 | 0.00 | 0 |" in md
    assert (out / "overlap.png").stat().st_size > 0
    assert len(pets["examples"]) == 3 and all((out / p).stat().st_size > 0 for p in pets["examples"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counters"] == {"read": 8, "kept": 5, "rejected": {"training_duplicate": 3}}


def test_report_without_predictions(deduped):
    report = overlap.run(["--dedup", str(deduped / "dedup"), "--out", str(deduped / "r"), "--examples", "0"])
    assert report["sets"]["pets"]["accuracy"] is None and report["sets"]["pets"]["examples"] == []
    assert (deduped / "r" / "overlap.png").exists()


@pytest.mark.parametrize("line, message", [
    ("not json", "JSONDecodeError"),
    ('{"eval_set": "pets", "label": 1, "pred": 1}', "KeyError"),
])
def test_bad_prediction_lines_are_one_clear_error(deduped, line, message):
    preds = deduped / "bad.jsonl"
    preds.write_text(line + "\n")
    with pytest.raises(SystemExit, match=rf"^overlap: .*bad.jsonl:1: .*{message}"):
        overlap.run(["--dedup", str(deduped / "dedup"), "--predictions", str(preds), "--out", str(deduped / "r")])


def test_missing_dedup_output_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="^overlap: .*manifest.json not found"):
        overlap.run(["--dedup", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")])


def test_pct_formats_missing_values():
    assert overlap.pct(None) == "n/a" and overlap.pct(math.nan) == "n/a" and overlap.pct(0.5) == "50.0"


def test_a_training_copy_counts_for_its_nearest_eval_image_only():
    from pipeline.common.evalsets import EvalSet
    digits = EvalSet(name="digits", path="-", layout="csv", classnames=("0", "1"))
    ids = {"digits": {"row0": 1, "row1": 1, "row2": 0}}
    decisions = [  # one training sample within the threshold of two eval images, nearest to row1
        {"uid": "u", "key": "u", "shard": "s", "eval_set": "digits", "eval_image_id": "row0", "distance": 6, "nearest": False},
        {"uid": "u", "key": "u", "shard": "s", "eval_set": "digits", "eval_image_id": "row1", "distance": 2, "nearest": True}]
    report = overlap.build_report([digits], ids, decisions, predictions=None)
    assert report["sets"]["digits"]["overlap_images"] == 1 and report["sets"]["digits"]["training_samples_matched"] == 1
