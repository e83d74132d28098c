"""Benchmark of issue 15 (native code only where it is ours): each stage whose C changed, before and after.

"Before" is a checkout of the previous main given by `--reference` (C LID `_lidcore`, BLAKE2b and CRC-32 in
`_matchcore`, the C XML subset parser in `_wikicore`), its extensions built in place
(`python -c "from setuptools import setup; setup()" build_ext --inplace` in it); "after" is this checkout
(fastText inference from the fasttext-predict wheel, uids from hashlib, buckets from zlib, balance's draws with
hashlib + numpy, pages parsed by ElementTree/expat). Both run as `python -m pipeline.<stage>` in a fresh process
(FnApiRunner, one worker) from their own checkout, taking turns, the best CPU time (user + sys) of `--repeats`
each, in one run on one machine:
- `match`, LID on (the default): real CC3M + LAION captions replicated to `--captions` and to a quarter of them;
  the marginal rate (the difference of the two CPU times) is the steady-state captions/s per core that the
  projection uses (bench_match's rule);
- `balance` at t = bench_match.HEAD_HEAVY_T over the after-run's matched pairs (most pairs then hold only head
  entries, as at full scale, so the seeded draws are the work);
- `queries` on the sample excerpt replicated `--copies` times into a multistream dump (bench_queries').
Outputs must be equal: match counters, the balanced parts and queries.tsv byte for byte.
And what the C that stays saves (in process, CPU time, best of `--repeats`): stage 1's counting core against its
Python reference on the sample excerpt's articles (bench_queries.check_c_core), and `match.check_rows` /
`match.hit_columns` against their twins on the real captions (hits: one per word, as the matchers report them).
Writes `bench/results/native.json` and the "native" section of BENCHMARKS.md with the full-scale cost of each
difference at the projection's sizes (bench/projection.py).

Run: python -m bench.bench_native --reference DIR [--data ../shared/data] [--captions 200000] [--repeats 2]
(`make bench-native REFERENCE=DIR` builds the reference's extensions and runs it.)
"""

from __future__ import annotations

import argparse
import bz2
import filecmp
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import projection
from bench.bench_match import HEAD_HEAVY_T, load_captions, replicate, run_match, write_pool, write_queries_tsv, \
    load_bench_queries
from bench.bench_queries import build_multistream, check_c_core
from bench.report import child_cpu, machine, machine_line, save_results, update_section
from pipeline.match import stage as match

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DUMP = REPO / "data" / "sample" / "enwiki-excerpt.xml.bz2"


def c_lines(tree: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in sorted(tree.glob("pipeline/**/*.c")))


def best_of_turns(runs: dict[str, callable], repeats: int) -> dict[str, float]:
    """Each named run `repeats` times, taking turns; the least CPU time of each (the least disturbed)."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            best[name] = min(best[name], run())
    return best


def bench_match(ref: Path, data: Path, n: int, work: Path, repeats: int) -> dict:
    queries = work / "queries.tsv"
    write_queries_tsv(load_bench_queries(data / "bench-queries.tsv.gz"), queries)
    captions = replicate(load_captions(data)[0], n)
    pools = {"quarter": write_pool(captions[:n // 4], work / "pool-quarter.parquet"),
             "full": write_pool(captions, work / "pool.parquet")}
    manifests = {}

    def run(side: str, size: str):
        def go() -> float:
            out = work / side
            out.mkdir(exist_ok=True)
            manifest, cpu, _ = run_match(pools[size], queries, out, cwd=ref if side == "before" else REPO)
            manifests[side] = manifest
            return cpu
        return go

    best = best_of_turns({f"{side}_{size}": run(side, size) for side in ("before", "after")
                          for size in ("quarter", "full")}, repeats)
    out = {"captions": n, "cpu_s": {k: round(v, 2) for k, v in best.items()},
           "same_counters": manifests["before"]["counters"] == manifests["after"]["counters"]}
    for side in ("before", "after"):
        out[f"{side}_marginal_captions_per_s"] = round((n - n // 4) / (best[f"{side}_full"] - best[f"{side}_quarter"]))
    return out


def bench_balance(ref: Path, work: Path, repeats: int) -> dict:
    def run(side: str):
        def go() -> float:
            out = work / f"balanced-{side}"
            shutil.rmtree(out, ignore_errors=True)
            return child_cpu([sys.executable, "-m", "pipeline.balance", "--matched", str(work / "after" / "matched"),
                              "--out", str(out), "--t", str(HEAD_HEAVY_T), "--runner=FnApiRunner"],
                             ref if side == "before" else REPO)[0]
        return go

    best = best_of_turns({side: run(side) for side in ("before", "after")}, repeats)
    manifests = {side: json.loads((work / f"balanced-{side}" / "manifest.json").read_text())
                 for side in ("before", "after")}
    parts = sorted(p.name for p in (work / "balanced-after").glob("part-*.parquet"))
    same = parts == sorted(p.name for p in (work / "balanced-before").glob("part-*.parquet")) and all(
        filecmp.cmp(work / "balanced-before" / p, work / "balanced-after" / p, shallow=False) for p in parts)
    pairs = manifests["after"]["counters"]["read"]
    return {"t": HEAD_HEAVY_T, "pairs": pairs, "cpu_s": {k: round(v, 2) for k, v in best.items()},
            "same_counters": manifests["before"]["counters"] == manifests["after"]["counters"],
            "same_parts": same, "before_pairs_per_s": round(pairs / best["before"]),
            "after_pairs_per_s": round(pairs / best["after"])}


def bench_queries(ref: Path, copies: int, work: Path, repeats: int) -> dict:
    dump, xml_bytes = build_multistream(SAMPLE_DUMP, copies, work)

    def run(side: str):
        def go() -> float:
            out = work / f"queries-{side}"
            shutil.rmtree(out, ignore_errors=True)
            return child_cpu([sys.executable, "-m", "pipeline.queries", "--dump", str(dump), "--out", str(out),
                              "--no-checksums", "--runner=FnApiRunner"], ref if side == "before" else REPO)[0]
        return go

    best = best_of_turns({side: run(side) for side in ("before", "after")}, repeats)
    mb = xml_bytes / 1e6
    return {"xml_mb": round(mb, 2), "copies": copies, "cpu_s": {k: round(v, 2) for k, v in best.items()},
            "same_queries_tsv": filecmp.cmp(work / "queries-before" / "queries.tsv",
                                            work / "queries-after" / "queries.tsv", shallow=False),
            "before_mb_s": round(mb / best["before"], 2), "after_mb_s": round(mb / best["after"], 2)}


def best_cpu(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def bench_kept_c(data: Path, n: int, repeats: int) -> dict:
    """CPU seconds of each C entry point that stays and of its Python twin, and the full-scale difference."""
    wiki = check_c_core(SAMPLE_DUMP)
    xml_mb = len(bz2.open(SAMPLE_DUMP).read()) / 1e6
    captions = replicate(load_captions(data)[0], n)
    urls = [f"http://img.example.com/{i}.jpg" for i in range(n)]
    hits = [(m.end(), i % 400_000) for i, c in enumerate(captions) for m in re.finditer(r"\S+", c)]
    args = (match.MIN_CAPTION_CHARS, match.MAX_CAPTION_CHARS, match.MIN_WORDS)
    rows = {"c": best_cpu(lambda: match.check_rows(urls, captions, None, *args), repeats),
            "py": best_cpu(lambda: match.check_rows_py(urls, captions, None, *args), repeats)}
    cols = {"c": best_cpu(lambda: match.hit_columns(hits, 0, 1), repeats),
            "py": best_cpu(lambda: match.hit_columns_py(hits, 0, 1), repeats)}
    per_caption = (rows["py"] - rows["c"] + cols["py"] - cols["c"]) / n
    return {"wikicore": {"xml_mb": round(xml_mb, 2), "c_s": round(wiki["c_count_s"], 3),
                         "py_s": round(wiki["python_count_s"], 3),
                         "identical": wiki["identical"],
                         "full_scale_core_h_saved": round((wiki["python_count_s"] - wiki["c_count_s"]) / xml_mb
                                                          * projection.ENWIKI_XML_MB / 3600, 1)},
            "matchcore": {"captions": n, "hits": len(hits), "check_rows_c_s": round(rows["c"], 3),
                          "check_rows_py_s": round(rows["py"], 3), "hit_columns_c_s": round(cols["c"], 3),
                          "hit_columns_py_s": round(cols["py"], 3),
                          "full_scale_core_h_saved": round(per_caption * projection.POOL_PAIRS / 3600, 1)}}


def full_scale_hours(rate_before: float, rate_after: float, units: float) -> tuple[float, float]:
    return units / rate_before / 3600, units / rate_after / 3600


def markdown(r: dict) -> str:
    m, b, q = r["match"], r["balance"], r["queries"]
    rows = [("`match` end to end, LID on: marginal captions/s", m["before_marginal_captions_per_s"],
             m["after_marginal_captions_per_s"], projection.POOL_PAIRS, "captions",
             f"C fastText inference, C BLAKE2b uids and CRC-32 buckets -> the fasttext-predict wheel, hashlib, zlib; "
             f"counters equal: {m['same_counters']}"),
            (f"`balance` end to end, t={b['t']} (head-heavy): pairs/s", b["before_pairs_per_s"],
             b["after_pairs_per_s"], projection.MATCHED_PAIRS, "pairs",
             f"C BLAKE2b draws -> hashlib + numpy; parts byte-identical: {b['same_parts']}"),
            (f"`queries` end to end ({q['xml_mb']} MB of XML): MB/s", q["before_mb_s"], q["after_mb_s"],
             projection.ENWIKI_XML_MB, "MB of XML",
             f"C XML subset parser -> ElementTree (expat); queries.tsv byte-identical: {q['same_queries_tsv']}")]
    lines = ["## Native code: before and after issue 15 (`python -m bench.bench_native --reference DIR`)", "",
             f"{machine_line(r['machine'])}. Before: the previous main with its C extensions; after: this checkout. "
             f"Each stage as `python -m pipeline.<stage>` in a fresh process (FnApiRunner, one worker), before and "
             f"after taking turns, the least CPU time of {r['repeats']} each (match: the marginal rate over "
             f"{m['captions']:,} real captions and a quarter of them). Lines of hand-written C: "
             f"{r['c_lines_before']:,} before, {r['c_lines_after']:,} after.", "",
             "| stage, per core | before (C) | after | after / before | full scale before -> after, core-hours | "
             "what changed |", "|---|---:|---:|---:|---:|---|"]
    for what, before, after, units, unit, changed in rows:
        hb, ha = full_scale_hours(before, after, units)
        lines.append(f"| {what} | {before:,} | {after:,} | {after / before:.2f}x | {hb:,.1f} -> {ha:,.1f} "
                     f"({ha - hb:+,.1f} for {units:,.0f} {unit}) | {changed} |")
    extra = sum(full_scale_hours(before, after, units)[1] - full_scale_hours(before, after, units)[0]
                for _, before, after, units, _, _ in rows)
    lines += ["", f"Together the difference costs {extra:,.0f} core-hours on a full WIT-400M build "
              f"({extra / projection.CORES * 60:,.1f} min on the projection's {projection.CORES:,} cores), against "
              "~283 core-hours for downloading, ~39 for dedup and ~4,500 GPU-hours for training (projection below)."]
    k = r.get("kept_c")
    if k:
        w, mc = k["wikicore"], k["matchcore"]
        lines += ["", "What the C that stays saves (in process, one core, CPU time, C vs its Python twin):", "",
                  "| entry point | C | Python twin | twin / C | full scale, core-hours saved |", "|---|---:|---:|---:|---:|",
                  f"| `_wikicore.SplitCounter` (strip + tokenize + count), the excerpt's {w['xml_mb']} MB of XML "
                  f"(identical counts: {w['identical']}) | {w['c_s']} s | {w['py_s']} s | {w['py_s'] / w['c_s']:.1f}x "
                  f"| {w['full_scale_core_h_saved']:,} of {projection.ENWIKI_XML_MB:,} MB |",
                  f"| `_matchcore.check_rows`, {mc['captions']:,} real captions | {mc['check_rows_c_s']} s | "
                  f"{mc['check_rows_py_s']} s | {mc['check_rows_py_s'] / mc['check_rows_c_s']:.1f}x | "
                  f"{mc['full_scale_core_h_saved']:,} with hit_columns, of {projection.POOL_PAIRS:,.0f} captions |",
                  f"| `_matchcore.hit_columns`, {mc['hits']:,} hits | {mc['hit_columns_c_s']} s | "
                  f"{mc['hit_columns_py_s']} s | {mc['hit_columns_py_s'] / mc['hit_columns_c_s']:.1f}x | (above) |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference", required=True, help="checkout of the previous main, extensions built in place")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--captions", type=int, default=200_000)
    p.add_argument("--copies", type=int, default=8, help="copies of the sample excerpt in the queries dump")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    ref = Path(args.reference).resolve()
    if not list(ref.glob("pipeline/**/_matchcore*.so")):
        raise SystemExit(f"{ref}: no built _matchcore extension (build it in place there first)")
    work = Path(tempfile.mkdtemp(prefix="bench-native-"))
    try:
        r = {"machine": machine(), "repeats": args.repeats, "c_lines_before": c_lines(ref),
             "c_lines_after": c_lines(REPO)}
        r["match"] = bench_match(ref, Path(args.data), args.captions, work, args.repeats)
        r["balance"] = bench_balance(ref, work, args.repeats)
        r["queries"] = bench_queries(ref, args.copies, work, args.repeats)
        r["kept_c"] = bench_kept_c(Path(args.data), args.captions, args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save_results("native", r)
    md = markdown(r)
    update_section("native", md)
    print(md)
    return r


if __name__ == "__main__":
    main()
