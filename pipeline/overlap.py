"""Stage `overlap` (`make overlap`): the CLIP-paper overlap report from the dedup decisions.

Implements CLIP (Radford et al. 2021) section 5 and appendix C: per eval set, how many of its images have
a near-duplicate in the training data (Overlap) and how many do not (Clean); with zero-shot predictions,
the accuracy on All / Clean / Overlap, the All - Clean difference, a one-sided binomial test of the Overlap
accuracy with the Clean accuracy as the null hypothesis (alternative: Overlap is more accurate, as when a
model memorised its training copies), 99.5% Clopper-Pearson intervals, and a Bonferroni correction across
the sets tested.

In:  `--dedup work/dedup` (the `decisions.parquet` and `manifest.json` the `dedup` stage wrote; its eval
     sets are reused unless `--eval NAME=PATH` picks others), optionally `--predictions preds.jsonl`.
Out (`--out reports/overlap`): `overlap.md`, `overlap.json`, `overlap.png` (overlap % vs All - Clean
     accuracy, one point per set; overlap % per set without predictions), `examples/<set>-<n>.png` (the
     eval image beside its closest training match, with the caption), `manifest.json`.
Run: python -m pipeline.overlap --dedup work/dedup [--eval NAME=PATH ...] [--predictions preds.jsonl] \\
         --out reports/overlap [--examples 3]

Overlap = the eval images that are the nearest match (smallest distance, ties included) of at least one
What counts as Overlap, and the predictions file format: the comment below the imports.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import os
import statistics
import textwrap
import time

import pyarrow.parquet as pq
from scipy import stats as scipy_stats

from pipeline.common import files, rawtar
from pipeline.common.images import image_member
from pipeline.common.evalsets import EvalSet, EvalSetError, iter_eval_images, open_eval_sets
from pipeline.common.rawtar import iter_raw_samples
from pipeline.common.manifest import write_json_atomic, write_manifest
from pipeline.common.logs import setup_logging

# Overlap, and the predictions file (written by train/zeroshot.py)
#
# embedding signal found, its highest-cosine eval image). A training sample within the threshold of several eval images
# is dropped by `dedup` either way, but counts as a copy of its closest one only: on low-detail sets (MNIST
# digits are near each other in pHash space) counting every eval image within the threshold would report
# dozens of "overlapping" eval images for one copied digit (measured on mnist_5k: 5 planted copies, 94 eval
# images within 8 bits, 5 nearest).
#
# Predictions file (written by the trainer's zero-shot eval, `train/zeroshot.py`): JSON Lines, one line per
# eval image,
#     {"eval_set": "cifar10", "image_id": "cat/0001.jpg", "label": 3, "pred": 5, "correct": false}
# `eval_set` is the NAME of `--eval NAME=PATH`; `image_id` is the id `pipeline/common/evalsets.py` gives the image
# (path relative to an ImageFolder root, the sample key of a WebDataset set, `row<i>` of a CSV); `correct`
# may be left out, and is then `label == pred`. Images without a prediction are left out of the accuracies
# (and counted); predictions for unknown images are counted and ignored.

log = logging.getLogger(__name__)

STAGE = "overlap"
CONFIDENCE = 0.995    # CLIP appendix C: 99.5% Clopper-Pearson intervals
ALPHA = 0.05          # family-wise significance level, Bonferroni-corrected across sets
TRAINING_DUPLICATE = "training_duplicate"


# ---- statistics (pure) -----------------------------------------------------------------------------------

def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the one-sided (greater) p-value of k successes in n."""
    if k <= 0:
        return 1.0
    return float(scipy_stats.binom.sf(k - 1, n, p))


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact two-sided binomial confidence interval for k/n (Clopper & Pearson 1934), via the beta quantiles."""
    if n == 0:
        return 0.0, 1.0
    tail = (1 - confidence) / 2
    lower = 0.0 if k == 0 else float(scipy_stats.beta.ppf(tail, k, n - k + 1))
    upper = 1.0 if k == n else float(scipy_stats.beta.ppf(1 - tail, k + 1, n - k))
    return lower, upper


def bonferroni(p_values: dict[str, float]) -> dict[str, float]:
    """Each p-value times the number of tests, capped at 1."""
    m = len(p_values)
    return {name: min(1.0, p * m) for name, p in p_values.items()}


def accuracy(correct: list[bool]) -> dict:
    n, k = len(correct), sum(correct)
    lower, upper = clopper_pearson(k, n)
    return {"n": n, "correct": k, "accuracy": k / n if n else None, "ci_low": lower, "ci_high": upper}


def subset_accuracies(correct_by_id: dict[str, bool], overlap_ids: set[str]) -> dict:
    """All / Clean / Overlap accuracies, All - Clean, and the one-sided test of Overlap against Clean."""
    all_ = accuracy(list(correct_by_id.values()))
    clean = accuracy([c for i, c in correct_by_id.items() if i not in overlap_ids])
    dirty = accuracy([c for i, c in correct_by_id.items() if i in overlap_ids])
    tested = dirty["n"] > 0 and clean["n"] > 0
    return {"all": all_, "clean": clean, "overlap": dirty,
            "all_minus_clean": all_["accuracy"] - clean["accuracy"] if clean["n"] and all_["n"] else None,
            "p_value": binomial_tail(dirty["correct"], dirty["n"], clean["accuracy"]) if tested else None}


def overlap_summary(per_set: dict[str, dict]) -> dict:
    pcts = [s["overlap_pct"] for s in per_set.values()]
    return {"sets": len(pcts), "median_overlap_pct": statistics.median(pcts) if pcts else None,
            "mean_overlap_pct": statistics.fmean(pcts) if pcts else None,
            "zero_overlap_sets": sorted(n for n, s in per_set.items() if s["overlap_images"] == 0)}


# ---- inputs ----------------------------------------------------------------------------------------------

def read_predictions(path: str) -> dict[str, dict[str, bool]]:
    """{eval_set: {image_id: correct}} from the JSONL interface above; SystemExit on a malformed line."""
    preds: dict[str, dict[str, bool]] = collections.defaultdict(dict)
    with files.open_file(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                correct = bool(row["correct"]) if "correct" in row else int(row["label"]) == int(row["pred"])
                preds[str(row["eval_set"])][str(row["image_id"])] = correct
            except (ValueError, KeyError, TypeError) as e:
                raise SystemExit(f"overlap: {path}:{line_no}: not a prediction line ({type(e).__name__}: {e}); "
                                 'expected {"eval_set", "image_id", "label", "pred", "correct"}') from None
    return preds


def eval_sets_of(dedup_manifest: dict, specs: list[str], classnames: list[str]) -> list[EvalSet]:
    """The sets given with --eval, else the ones the dedup run used (with the class names it resolved)."""
    if specs:
        return open_eval_sets(specs, classnames)
    return [EvalSet(name=n, path=s["path"], layout=s["layout"], classnames=tuple(s["classnames"]),
                    templates=tuple(s["templates"])) for n, s in dedup_manifest["eval_sets"].items()]


def eval_image_ids(eval_set: EvalSet) -> dict[str, int]:
    return {image_id: label for image_id, label, _ in iter_eval_images(eval_set)}


# ---- examples --------------------------------------------------------------------------------------------

def training_sample(shard: str, key: str) -> tuple[bytes | None, str]:
    """(image bytes, caption) of one training sample, read from its shard."""
    for sample_key, members in iter_raw_samples(shard):
        if sample_key == key:
            parts = {rawtar.extension(m): m.data for m in members}
            image = image_member(parts)
            return image, parts.get("txt", b"").decode("utf-8", "replace")
    return None, ""


def write_example(path: str, eval_image: bytes, train_image: bytes, title_eval: str, title_train: str,
                  caption: str) -> None:
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(1, 2, figsize=(6, 3.6))
    for ax, data, title in ((axes[0], eval_image, title_eval), (axes[1], train_image, title_train)):
        ax.imshow(Image.open(io.BytesIO(data)).convert("RGB"))
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.text(0.5, 0.02, "\n".join(textwrap.wrap(f"caption: {caption}", 80)[:3]), ha="center", fontsize=7)
    with files.atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def match_note(decision: dict) -> str:
    """'distance 4', or with the embedding signal 'distance 22, cosine 0.981, by embedding'."""
    note = f"distance {decision['distance']}"
    if decision.get("cosine") is not None:
        note += f", cosine {decision['cosine']:.3f}, by {decision['signal']}"
    return note


def write_examples(out: str, eval_set: EvalSet, decisions: list[dict], n: int) -> list[str]:
    """PNG pairs for the n overlapping eval images with the closest training matches."""
    best: dict[str, dict] = {}
    for d in sorted((d for d in decisions if d["nearest"]), key=lambda d: (d["distance"], d["eval_image_id"], d["uid"])):
        best.setdefault(d["eval_image_id"], d)
    chosen = list(best.values())[:n]
    wanted = {d["eval_image_id"] for d in chosen}
    images = {i: data for i, _, data in iter_eval_images(eval_set) if i in wanted}
    paths = []
    files.makedirs(files.join(out, "examples"))
    for k, d in enumerate(chosen):
        train_image, caption = training_sample(d["shard"], d["key"])
        if train_image is None or d["eval_image_id"] not in images:
            continue  # the shard changed since dedup ran: no example, the counts stand
        path = os.path.join("examples", f"{eval_set.name}-{k}.png")
        write_example(files.join(out, path), images[d["eval_image_id"]], train_image,
                      f"eval {eval_set.name}: {d['eval_image_id']}", f"training {d['uid'][:12]} ({match_note(d)})",
                      caption)
        paths.append(path)
    return paths


# ---- report ----------------------------------------------------------------------------------------------

def build_report(eval_sets: list[EvalSet], ids: dict[str, dict[str, int]], decisions: list[dict],
                 predictions: dict[str, dict[str, bool]] | None) -> dict:
    """The report's numbers (no files): per set overlap and, with predictions, the accuracy test."""
    by_set = collections.defaultdict(list)
    for d in decisions:
        by_set[d["eval_set"]].append(d)
    per_set = {}
    for s in eval_sets:
        overlap_ids = {d["eval_image_id"] for d in by_set[s.name] if d["nearest"]} & set(ids[s.name])
        n = len(ids[s.name])
        entry = {"images": n, "overlap_images": len(overlap_ids), "clean_images": n - len(overlap_ids),
                 "overlap_pct": 100.0 * len(overlap_ids) / n, "training_samples_matched":
                 len({d["uid"] for d in by_set[s.name]}), "accuracy": None}
        if predictions is not None:
            given = predictions.get(s.name, {})
            correct = {i: given[i] for i in ids[s.name] if i in given}
            entry["accuracy"] = subset_accuracies(correct, overlap_ids)
            entry["accuracy"]["images_without_prediction"] = n - len(correct)
            entry["accuracy"]["unknown_predictions"] = len(set(given) - set(ids[s.name]))
        per_set[s.name] = entry
    if predictions is not None:
        tested = {n: e["accuracy"]["p_value"] for n, e in per_set.items() if e["accuracy"]["p_value"] is not None}
        for name, p in bonferroni(tested).items():
            per_set[name]["accuracy"]["p_bonferroni"] = p
            per_set[name]["accuracy"]["significant"] = p < ALPHA
    return {"sets": per_set, "summary": overlap_summary(per_set), "confidence": CONFIDENCE, "alpha": ALPHA}


def pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def signed_points(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.2f}"


def embedding_note(report: dict) -> str:
    if report.get("embed_threshold") is None:
        return ""
    return f", or cosine >= {report['embed_threshold']} of the image encoder of {report['embed_checkpoint']}"


def render_markdown(report: dict) -> str:
    s = report["summary"]
    lines = ["# Train/eval overlap (CLIP section 5 method)", "",
             (f"Threshold: {report['threshold']} bits of a 64-bit pHash{embedding_note(report)}. Sets: {s['sets']}; "
              f"median overlap {s['median_overlap_pct']:.2f}%, mean {s['mean_overlap_pct']:.2f}%; "
              f"sets with zero overlap: {', '.join(s['zero_overlap_sets']) or 'none'}."), "",
             "| eval set | images | overlap images | overlap % | training samples matched |", "|---|---:|---:|---:|---:|"]
    for name, e in report["sets"].items():
        lines.append(f"| {name} | {e['images']} | {e['overlap_images']} | {e['overlap_pct']:.2f} | "
                     f"{e['training_samples_matched']} |")
    if any(e["accuracy"] for e in report["sets"].values()):
        lines += ["", (f"Zero-shot top-1 accuracy (%) with {100 * report['confidence']:.1f}% Clopper-Pearson intervals; "
                       "p: one-sided binomial test of Overlap accuracy against the Clean accuracy (greater), "
                       f"Bonferroni-corrected across sets, significant at {report['alpha']}."), "",
                  "| eval set | All | Clean | Overlap | All - Clean | p | p (Bonferroni) | significant |",
                  "|---|---:|---:|---:|---:|---:|---:|:-:|"]
        for name, e in report["sets"].items():
            a = e["accuracy"]
            if a["all"]["n"] == 0:
                lines.append(f"| {name} | no predictions | | | | | | |")
                continue
            cell = {sub: f"{pct(a[sub]['accuracy'])} [{pct(a[sub]['ci_low'])}, {pct(a[sub]['ci_high'])}] (n={a[sub]['n']})"
                    for sub in ("all", "clean", "overlap")}
            p = "n/a" if a["p_value"] is None else f"{a['p_value']:.3g}"
            pb = "n/a" if a.get("p_bonferroni") is None else f"{a['p_bonferroni']:.3g}"
            lines.append(f"| {name} | {cell['all']} | {cell['clean']} | {cell['overlap']} | "
                         f"{signed_points(a['all_minus_clean'])} | {p} | {pb} | {'yes' if a.get('significant') else 'no'} |")
    examples = [(n, p) for n, e in report["sets"].items() for p in e.get("examples", [])]
    if examples:
        lines += ["", "## Examples (eval image | closest training match)", ""]
        lines += [f"![{n}]({p})" for n, p in examples]
    return "\n".join(lines) + "\n"


def write_plot(path: str, report: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = report["sets"]
    fig, ax = plt.subplots(figsize=(6, 4))
    with_acc = {n: e for n, e in sets.items() if e["accuracy"] and e["accuracy"]["all_minus_clean"] is not None}
    if with_acc:
        for name, e in with_acc.items():
            ax.scatter(e["overlap_pct"], 100 * e["accuracy"]["all_minus_clean"], color="tab:blue")
            ax.annotate(name, (e["overlap_pct"], 100 * e["accuracy"]["all_minus_clean"]), fontsize=8)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("detected overlap (%)")
        ax.set_ylabel("accuracy change, All - Clean (points)")
    else:
        ax.barh(list(sets), [e["overlap_pct"] for e in sets.values()])
        ax.set_xlabel("detected overlap (%)")
    ax.set_title("Eval images with a near-duplicate in training")
    with files.atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.overlap", description=__doc__.split("\n")[0])
    p.add_argument("--dedup", required=True, help="the dedup stage's output folder (decisions.parquet, manifest.json)")
    p.add_argument("--eval", action="append", default=[], metavar="NAME=PATH",
                   help="eval sets to report (default: the ones the dedup run used)")
    p.add_argument("--classnames", action="append", default=[], metavar="NAME=FILE|a,b,c")
    p.add_argument("--predictions", help="per-image zero-shot predictions, JSON Lines (see the module docstring)")
    p.add_argument("--out", required=True, help="report folder (e.g. reports/overlap)")
    p.add_argument("--examples", type=int, default=3, help="example PNG pairs per eval set (default 3)")
    return p.parse_args(argv)


def run(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.time()
    manifest_path = files.join(args.dedup, "manifest.json")
    if not files.exists(manifest_path):
        raise SystemExit(f"overlap: {manifest_path} not found: run the dedup stage first (make dedup)")
    with files.open_file(manifest_path, "r", encoding="utf-8") as f:
        dedup_manifest = json.load(f)
    with files.open_file(files.join(args.dedup, "decisions.parquet")) as f:
        decisions = pq.read_table(f).to_pylist()
    predictions = read_predictions(args.predictions) if args.predictions else None
    try:
        eval_sets = eval_sets_of(dedup_manifest, args.eval, args.classnames)
        ids = {s.name: eval_image_ids(s) for s in eval_sets}
    except EvalSetError as e:
        raise SystemExit(f"overlap: {e}") from None
    unknown = set(predictions or {}) - {s.name for s in eval_sets}
    if unknown:
        log.warning("predictions for eval sets not in this report, ignored: %s", ", ".join(sorted(unknown)))

    report = build_report(eval_sets, ids, decisions, predictions)
    report["threshold"] = dedup_manifest["settings"]["threshold"]
    report["embed_threshold"] = dedup_manifest["settings"].get("embed_threshold")
    report["embed_checkpoint"] = dedup_manifest["settings"].get("embed_checkpoint")
    report["dedup"] = args.dedup
    report["predictions"] = args.predictions
    files.makedirs(args.out)
    for s in eval_sets:
        report["sets"][s.name]["examples"] = write_examples(
            args.out, s, [d for d in decisions if d["eval_set"] == s.name], args.examples)
    write_json_atomic(files.join(args.out, "overlap.json"), report)
    files.write_text(files.join(args.out, "overlap.md"), render_markdown(report))
    write_plot(files.join(args.out, "overlap.png"), report)
    n_images = sum(e["images"] for e in report["sets"].values())
    n_overlap = sum(e["overlap_images"] for e in report["sets"].values())
    write_manifest(args.out, stage=STAGE, settings={"confidence": CONFIDENCE, "alpha": ALPHA, "examples": args.examples},
                   inputs=[{"path": manifest_path}, {"path": args.predictions}] if args.predictions else [{"path": manifest_path}],
                   counters={"read": n_images, "kept": n_images - n_overlap, "rejected": {TRAINING_DUPLICATE: n_overlap}},
                   wall_time_s=time.time() - started)
    return report


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    report = run(argv)
    s = report["summary"]
    log.info("overlap: %d sets, median %.2f%%, mean %.2f%%, zero overlap: %s", s["sets"], s["median_overlap_pct"],
             s["mean_overlap_pct"], ", ".join(s["zero_overlap_sets"]) or "none")


if __name__ == "__main__":
    main()
