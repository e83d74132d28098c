"""Benchmark of the language filter's fastText inference: the C core (pipeline/match/_lidcore.c) against the
fasttext-predict wheel it replaces, on real captions.

In one run, on one core:
- agreement: every real caption (CC3M validation + the LAION 10k sample), as the stage gives it to LID
  (`match.normalize_caption`) and raw (newlines, tabs and all): the C core's top label against the wheel's
  (`multilinePredict`, k=1, as lid.py called it), with the word cache (the default) and without it
  (`max_cached_words=0`, fastText's summation order), the largest |probability difference| against the
  wheel's `predict` (one call per text), and the labels at a few `--lid-min-confidence` thresholds; every
  disagreement is listed with its text;
- the share of CC3M captions (all English) each identifies as English;
- texts/s of CPU time (`time.process_time`) on the normalized captions replicated to `--captions`, in batches
  of `--batch` as the stage's identifier function gets them: the wheel's identifier (lid.py's fallback:
  line building + `multilinePredict` + label names), the C core's (`top_labels`) warm, without the cache, and
  cold (an empty cache, one pass over the distinct captions: every word's first occurrence misses).
  Rates are the best of `--chunks` slices, the variants taking turns on each slice (the machine is shared:
  the best slice is the least disturbed one).
Writes `bench/results/lid.json` and prints a Markdown table.

Run:  python -m bench.bench_lid [--data ../shared/data] [--captions 200000] [--batch 4096] [--chunks 5] [--out F]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench.bench_match import load_captions
from bench.report import machine, machine_line, update_section
from pipeline.match import lid
from pipeline.match import normalize_caption

REPO = Path(__file__).resolve().parents[1]
THRESHOLDS = (0.0, 0.1, 0.5, 0.9)
PROB_TOLERANCE = 1e-5  # the cache's summation order may move a probability by ~1e-7 (pipeline/match/_lidcore.c)


def wheel_line(text: str) -> str:
    """The one line fastText reads for a text, as lid.py builds it."""
    return (text.replace("\n", " ") if "\n" in text else text) + "\n"


def wheel_top(model, texts: list[str], threshold: float = 0.0) -> list[str | None]:
    labels = model.f.multilinePredict([wheel_line(t) for t in texts], 1, threshold, "strict")
    return [found[0].removeprefix("__label__") if found else None for found in labels]


def wheel_probability(model, texts: list[str]) -> list[float]:
    """The wheel's top probability per text (its multilinePredict returns labels only)."""
    return [model.f.predict(wheel_line(t), 1, 0.0, "strict")[0][0] for t in texts]


def compare(model, core, texts: list[str]) -> dict:
    """The C core's (label, probability) against the wheel's on every text."""
    ref_labels, ref_probs = wheel_top(model, texts), wheel_probability(model, texts)
    out = core.predict(texts)
    mine = [core.labels[i] if i >= 0 else None for i, _ in out]
    disagreements = [{"text": t, "wheel": (a, pa), "core": (b, pb)}
                     for t, a, pa, b, (_, pb) in zip(texts, ref_labels, ref_probs, mine, out) if a != b]
    return {"texts": len(texts), "labels_equal": len(texts) - len(disagreements),
            "max_abs_prob_diff": max(abs(pa - pb) for pa, (_, pb) in zip(ref_probs, out)),
            "disagreements": disagreements[:20]}


def agreement(model, captions: list[str], normalized: list[str], n_cc3m: int) -> dict:
    cached, exact = lid._lidcore.Model(lid.fasttext_model_path()), lid._lidcore.Model(lid.fasttext_model_path(), 0)
    result = {}
    for name, texts in (("normalized", normalized), ("raw", captions)):
        result[name] = {"cached": compare(model, cached, texts), "exact": compare(model, exact, texts)}
    result["thresholds"] = {str(t): sum(a != b for a, b in zip(wheel_top(model, normalized, t),
                                                               cached.top_labels(normalized, t)))
                            for t in THRESHOLDS}
    cc3m = normalized[:n_cc3m]
    result["cc3m_english_share"] = {
        "wheel": round(sum(x == "en" for x in wheel_top(model, cc3m)) / n_cc3m, 5),
        "core": round(sum(x == "en" for x in cached.top_labels(cc3m)) / n_cc3m, 5)}
    return result


def batched(identify: Callable[[list[str]], list], texts: list[str], batch: int) -> None:
    for start in range(0, len(texts), batch):
        identify(texts[start:start + batch])


def cpu_seconds(fn: Callable, *args) -> float:
    start = time.process_time()
    fn(*args)
    return time.process_time() - start


def rates(model, distinct: list[str], texts: list[str], batch: int, chunks: int) -> dict:
    """Texts per CPU second of each variant: best and median over `chunks` slices, variants in turn."""
    path = lid.fasttext_model_path()
    warm, exact, cold = lid._lidcore.Model(path), lid._lidcore.Model(path, 0), lid._lidcore.Model(path)
    batched(warm.top_labels, distinct, batch)  # fill the cache once: warm slices then find every word
    size = len(texts) // chunks
    variants = {"wheel": lambda part: batched(lambda b: wheel_top(model, b), part, batch),
                "core_warm": lambda part: batched(warm.top_labels, part, batch),
                "core_no_cache": lambda part: batched(exact.top_labels, part, batch)}
    seconds: dict[str, list[float]] = {name: [] for name in [*variants, "core_cold"]}
    for k in range(chunks):
        part = texts[k * size:(k + 1) * size]
        for name, fn in variants.items():
            seconds[name].append(cpu_seconds(fn, part) / len(part))
        cold.clear_cache()
        seconds["core_cold"].append(cpu_seconds(batched, cold.top_labels, distinct, batch) / len(distinct))
    return {name: {"best": round(1 / min(s)), "median": round(1 / statistics.median(s))}
            for name, s in seconds.items()} | {"cache_after_cold_pass": cold.cache_stats}


def markdown(r: dict) -> str:
    rt, ag = r["rates_texts_per_cpu_s"], r["agreement"]
    wheel = rt["wheel"]["best"]

    def rate(name: str) -> str:
        v = rt[name]
        return (f"{v['best']:,} texts/s ({1e6 / v['best']:.1f} us/text, {v['best'] / wheel:.1f}x the wheel; "
                f"median {v['median']:,})")

    lines = ["| fastText lid.176, one core, CPU time | measured |", "|---|---|",
             (f"| captions | {r['captions']:,} ({r['distinct_captions']:,} distinct: CC3M validation + LAION 10k), "
              f"batches of {r['batch']:,} |"),
             (f"| wheel (fasttext-predict `multilinePredict`, lid.py's fallback) | {wheel:,} texts/s "
              f"({1e6 / wheel:.1f} us/text; median {rt['wheel']['median']:,}) |"),
             f"| C core (`_lidcore`), warm word cache | {rate('core_warm')} |",
             f"| C core, cold cache (first pass over the distinct captions) | {rate('core_cold')} |",
             f"| C core, no cache (fastText's summation order) | {rate('core_no_cache')} |"]
    for name in ("normalized", "raw"):
        for mode in ("cached", "exact"):
            a = ag[name][mode]
            lines.append(f"| top label = wheel's, {name} captions, {mode} | {a['labels_equal']:,} / {a['texts']:,}; "
                         f"max abs prob diff {a['max_abs_prob_diff']:.2e} |")
    lines.append("| labels differing at thresholds " + ", ".join(ag["thresholds"]) + " | "
                 + ", ".join(str(v) for v in ag["thresholds"].values()) + " |")
    share = ag["cc3m_english_share"]
    lines.append(f"| CC3M captions -> en | wheel {share['wheel']:.2%}, C core {share['core']:.2%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--captions", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--chunks", type=int, default=5, help="rates are the best of this many slices")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "lid.json"))
    args = p.parse_args(argv)
    if lid._lidcore is None:
        raise SystemExit("pipeline.match._lidcore is not built: pip install -e . with a C compiler")
    import fasttext  # the fasttext-predict wheel: the reference

    model = fasttext.load_model(lid.fasttext_model_path())
    load_at_start = os.getloadavg()
    captions, n_cc3m = load_captions(Path(args.data))
    normalized = [normalize_caption(c) for c in captions]
    texts = (normalized * (args.captions // len(normalized) + 1))[:args.captions]
    results = {"machine": machine(), "load_average_at_start": load_at_start, "captions": len(texts),
               "distinct_captions": len(captions), "batch": args.batch,
               "agreement": agreement(model, captions, normalized, n_cc3m),
               "rates_texts_per_cpu_s": rates(model, normalized, texts, args.batch, args.chunks)}
    results["ok"] = all(results["agreement"][n][m]["labels_equal"] == results["agreement"][n][m]["texts"]
                        and results["agreement"][n][m]["max_abs_prob_diff"] <= PROB_TOLERANCE
                        for n in ("normalized", "raw") for m in ("cached", "exact"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    md = (f"## Language ID: C core vs the fastText wheel (`python -m bench.bench_lid --data ../shared/data`)\n\n"
          f"{machine_line(results['machine'])}\n\n{markdown(results)}")
    update_section("lid", md)
    print(f"{md}\n\nwrote {out}")
    return results


if __name__ == "__main__":
    main()
