"""The end of `make demo`: one short summary of every stage, and where each report is.

Reads only the files the stages wrote (manifests, stats, zero-shot results); prints to the terminal.
Run: python -m demo.summary
"""

from __future__ import annotations

import json
from pathlib import Path

STAGES = (  # (label, manifest, report a person opens)
    ("queries", "queries/demo/manifest.json", "queries/demo/queries.tsv"),
    ("match", "work/demo/matched/manifest.json", "work/demo/matched/query_counts.tsv"),
    ("balance", "work/demo/balanced/manifest.json", "work/demo/balanced/entry_counts.png"),
    ("shards", "shards/demo/manifest.json", "shards/demo/"),
    ("dedup", "work/demo/dedup/manifest.json", "shards/demo-dedup/"),
    ("overlap", "reports/demo/overlap/manifest.json", "reports/demo/overlap/overlap.md"),
)


def load(path: str) -> dict | None:
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else None


def counter_line(counters: dict) -> str:
    rejected = counters.get("rejected", {})
    reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(rejected.items(), key=lambda kv: -kv[1]) if v)
    return (f"read {counters['read']:,} = kept {counters['kept']:,} + rejected {sum(rejected.values()):,}"
            + (f" ({reasons})" if reasons else ""))


def planted_found(world: dict) -> int:
    """How many planted eval images the dedup decisions matched (eval image ids are class/row.png)."""
    import pyarrow.parquet as pq  # only here: the summary otherwise reads JSON

    path = Path("work/demo/dedup/decisions.parquet")
    if not path.exists():
        return 0
    matched = set(pq.read_table(path, columns=["eval_image_id"]).column(0).to_pylist())
    return sum(p in matched for p in world["planted_duplicates"])


def main() -> None:
    print("\n== demo summary")
    for label, manifest_path, report in STAGES:
        m = load(manifest_path)
        if m is None:
            print(f"  {label:8s} not run ({manifest_path} missing)")
            continue
        print(f"  {label:8s} {counter_line(m['counters'])}  -> {report}")
    balance = load("work/demo/balanced/stats.json")
    if balance:
        print(f"  balance: t={balance['t']}, {balance['head_entries']} head entries; pairs "
              f"{balance['pairs_before']:,} -> {balance['pairs_kept']:,} (expected {balance['expected_kept_metaclip']:,.0f})")
    stats = load("reports/demo/stats/stats.json")
    if stats:
        print(f"  stats: {stats['samples']:,} samples in {stats['shards']['read']} "
              f"shard(s), read at {stats['samples_per_s']:,.0f} samples/s -> reports/demo/stats/stats.md, *.png")
    world, dedup = load("work/demo/world/manifest.json"), load("work/demo/dedup/manifest.json")
    if world and dedup:
        found = planted_found(world)
        print(f"  dedup: {len(world['planted_duplicates'])} held-out digits were planted in the pool (upscaled, "
              f"recompressed); {found} of them found and removed -> work/demo/dedup/decisions.parquet")
    zeroshot = load("runs/demo/zeroshot.json")
    if zeroshot:
        for templates, r in zeroshot.get("classification", {}).items():
            print(f"  zero-shot ({templates} templates): top-1 {r['top1']:.1%}, top-5 {r['top5']:.1%} "
                  f"on {r['n']:,} held-out digits; chance {zeroshot['chance']:.0%}  -> runs/demo/zeroshot.json")
    overlap = load("reports/demo/overlap/overlap.json")
    if overlap:
        s = overlap["summary"]
        print(f"  overlap: median {s['median_overlap_pct']:.2f}% of eval images have a near-duplicate in training "
              f"-> reports/demo/overlap/overlap.md, overlap.png")
    print("  training log: runs/demo/metrics.jsonl; benchmarks: make bench -> BENCHMARKS.md")


if __name__ == "__main__":
    main()
