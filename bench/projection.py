"""The last section of BENCHMARKS.md: what a full WIT-400M build would cost, from measured per-core rates.

Reads the figures the other benchmarks saved in bench/results/*.json, so the table changes when they
do. Each row names the rate it uses; the sizes are the CLIP/MetaCLIP ones stated in the table.
Run: python -m bench.projection (make bench runs it last).
"""

from __future__ import annotations

import json

from bench.report import RESULTS, update_section

CORES = 1024          # the stated cluster: 64 workers x 16 cores for the CPU stages
GPUS = 64             # ... and 64 accelerators for training
ENWIKI_XML_MB = 95_000          # enwiki pages-articles, uncompressed XML (~22 GB bz2)
POOL_PAIRS = 1.6e9              # MetaCLIP's pool size for 400M (CLIP's WIT: 400M kept)
MATCHED_PAIRS = 1.2e9           # share of the pool matching a query (CC3M: ~99.9% match at 411k entries)
DOWNLOADS = 400e6
SAMPLES_SEEN = 32 * 400e6       # CLIP's 32 epochs
OPEN_CLIP_A100 = 786            # open_clip ViT-B/32 samples/s per A100 (LAION-400M runs), DESIGN.md


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def rows() -> list[tuple[str, str, float | None, str]]:
    """(stage, work, units per second per core or GPU, which measurement)."""
    q, m, s, d, t, n = (load(n) for n in ("queries", "match", "shards", "dedup", "train", "native"))
    # bench_native measured match after issue 15 (LID on the fasttext-predict wheel): newer than a bench_match run
    # made before it, whose C LID no longer exists
    newer = n and (not m or (RESULTS / "native.json").stat().st_mtime > (RESULTS / "match.json").stat().st_mtime)
    match_rate = (n["match"]["after_marginal_captions_per_s"], "bench_native, after issue 15") if newer else (
        m and m["end_to_end"]["match_marginal_captions_per_s"], "bench_match")
    out = [
        ("queries", f"{ENWIKI_XML_MB / 1000:.0f} GB of XML", q and q["stage_mb_s_per_core"],
         "MB/s per core, `queries` end to end (bench_queries)"),
        ("match", f"{POOL_PAIRS / 1e9:.1f}B captions", match_rate[0],
         f"captions/s per core, `match.run` marginal, LID on ({match_rate[1]})"),
        ("balance", f"{MATCHED_PAIRS / 1e9:.1f}B matched pairs", m and m["end_to_end"]["balance_pairs_per_s"],
         "pairs/s per core, `balance.run` (bench_match)"),
        ("shards", f"{DOWNLOADS / 1e6:.0f}M downloads",
         s and s["stage"]["images_per_s"] / s["settings"]["processes"],
         "images/s per process on loopback (bench_shards): CPU bound only; real downloads wait on the network"),
        ("dedup", f"{DOWNLOADS / 1e6:.0f}M shard images vs 100k eval", *dedup_rate(d, load("dedup_scale"))),
    ]
    return out, t


def dedup_rate(d: dict | None, scale: dict | None) -> tuple[float | None, str]:
    """dedup's end-to-end marginal rate against the largest eval index measured: bench_dedup_scale's 50,000 real
    eval images (2.2M hashes, near the projection's 100k) when it ran with --data, else bench_dedup's 5,000."""
    if scale and "stage" in scale:
        return (scale["stage"]["marginal_samples_per_cpu_s"],
                f"samples/s per core, `dedup` end to end marginal against {scale['stage']['eval_images']:,} eval images "
                f"= {scale['stage']['index_rows']:,} hashes (every default signal, decisions only; bench_dedup_scale)")
    return (d and d["stage"].get("marginal_samples_per_cpu_s", d["stage"]["samples_per_cpu_s"]),
            "samples/s per core, `dedup` end to end marginal (every default signal, decisions only; bench_dedup)")


def native_note() -> str:
    """The full-scale cost of issue 15 (C only where it is ours), from bench_native's before/after rates."""
    n = load("native")
    if not n:
        return ""
    parts, total = [], 0.0
    for stage, before, after, units in (
            ("match", n["match"]["before_marginal_captions_per_s"], n["match"]["after_marginal_captions_per_s"],
             POOL_PAIRS),
            ("balance", n["balance"]["before_pairs_per_s"], n["balance"]["after_pairs_per_s"], MATCHED_PAIRS),
            ("queries", n["queries"]["before_mb_s"], n["queries"]["after_mb_s"], ENWIKI_XML_MB)):
        extra = units / after / 3600 - units / before / 3600
        total += extra
        parts.append(f"{stage} {extra:+,.1f}")
    return (f" Native code (issue 15, bench_native): the fastText wheel for LID, hashlib/zlib for uids and buckets "
            f"and ElementTree for pages instead of our C cost {total:+,.1f} core-hours in all ({', '.join(parts)}).")


def gpu_rate(train: dict) -> tuple[float, str]:
    """ViT-B/32 samples/s per GPU: ours where a GPU run was recorded (bench_train --device cuda or
    bench/gpu_check.sh), else open_clip's published A100 figure."""
    measured = train.get("gpu_train", {})
    if measured.get("samples_per_s"):
        return measured["samples_per_s"], f"measured on {measured.get('gpu', 'a GPU')} (bench/gpu_check.sh)"
    return OPEN_CLIP_A100, ("open_clip's published A100 figure, not ours: no GPU has been lent to measure our "
                            "step (bench/gpu_check.sh is ready)")


def main() -> None:
    cpu_rows, train = rows()
    lines = ["## Projection: a full WIT-400M build", "",
             f"Cluster: {CORES:,} CPU cores (64 x 16) and {GPUS} GPUs. Each row divides the work by a rate measured "
             "above on this 2-core machine (per core, so it scales with cores only as far as the stage "
             "parallelises; Beam stages and img2dataset do).", "",
             "| stage | work | rate used | core-hours | wall on the cluster |", "|---|---|---|---:|---:|"]
    for stage, work, rate, what in cpu_rows:
        if not rate:
            lines.append(f"| {stage} | {work} | not measured ({what}) | - | - |")
            continue
        units = {"queries": ENWIKI_XML_MB, "match": POOL_PAIRS, "balance": MATCHED_PAIRS,
                 "shards": DOWNLOADS, "dedup": DOWNLOADS}[stage]
        core_h = units / rate / 3600
        lines.append(f"| {stage} | {work} | {rate:,.1f} {what} | {core_h:,.0f} | {core_h / CORES * 60:,.0f} min |")
    rate, source = gpu_rate(train or {})
    gpu_h = SAMPLES_SEEN / rate / 3600
    lines.append(f"| train ViT-B/32 | 32 epochs x 400M = {SAMPLES_SEEN / 1e9:.1f}B samples | {rate:,.0f} samples/s per GPU, "
                 f"{source} | {gpu_h:,.0f} GPU-hours | {gpu_h / GPUS / 24:,.1f} days |")
    scale = load("queries_scale")
    if scale:
        from bench.bench_queries_scale import ENWIKI_XML_BYTES, per_worker_mb
        from pipeline.queries.stage import count_buckets_for
        buckets = count_buckets_for([("enwiki.xml", ENWIKI_XML_BYTES)])
        lines += ["", f"Stage 1 memory at full enwiki (bench_queries_scale): ~{scale['enwiki']['bigrams'] / 1e6:,.0f}M "
                  f"distinct bigrams in {buckets} count buckets: ~{per_worker_mb(scale, buckets) / 1e3:.1f} GB per "
                  "worker (extrapolated), so 16-core workers with 4 GB per core run one bundle per core."]
    lines += ["", "Downloads over the internet are bounded by bandwidth, DNS and remote servers, not CPU: "
              "img2dataset's README reports 100M URLs in 20 h on one machine (~1,400 images/s) and LAION-400M in "
              "3.5 days, so 400M downloads take ~80 node-hours (~2.5 h on 32 nodes if the uplink allows). "
              "The CPU rows are lower bounds on time: they assume perfect scaling, no stragglers and no I/O waits."
              + native_note()]
    md = "\n".join(lines) + "\n"
    update_section("projection", md)
    print(md)


if __name__ == "__main__":
    main()
