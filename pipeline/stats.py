"""`make stats`: inspect a WebDataset shard folder and report what is in it.

In:  a shard folder as `shards` writes it (`*.tar`, `*_stats.json`, `manifest.json`), local or fsspec, or a
     glob or brace pattern of tars; optionally the `queries.tsv` the samples' `query_ids` refer to.
Out: `<out>/stats.json`, `<out>/stats.md`, and PNG plots (`captions.png`, `images.png`, `queries.png`,
     `contact_sheet.png`); a short summary on the terminal and a progress bar while reading.
Run: `python -m pipeline.stats --shards shards/NAME --out reports/stats [--queries Q.tsv] [--max-samples N]
     [--exclude work/NAME/dedup]` (the report then describes what the trainer reads with the same `--exclude`:
     the samples whose uid is in the dedup decisions are counted as excluded and left out of every figure)

Decisions
- Shards are read with `pipeline.common.rawtar` (a streaming tar reader), not with webdataset: a report must say *which* shard is
  empty or truncated and how many samples it held before the break, and must go on to the next shard.
  webdataset's handlers can skip a broken shard but do not tell which one or where it broke. Members are
  grouped into samples by key (the name up to its first dot), as webdataset does.
- Memory is bounded by the counters, not by the number of samples: fixed-bin histograms for lengths and
  sizes (exact mean, quantiles to within a bin), one counter per query id, and a seeded reservoir of
  `CONTACT_SHEET_SAMPLES` samples for the contact sheet (Algorithm R, reproducible).
- Download outcome comes from img2dataset's `NNNNN_stats.json` files; their error messages are grouped
  with `pipeline.common.downloads.failure_reason`, the same grouping as the manifest of `shards`.
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import logging
import math
import random
import sys
import tarfile
import textwrap
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from tqdm import tqdm

from pipeline.common import files, rawtar
from pipeline.common.downloads import failure_reason
from pipeline.common.images import image_member
from pipeline.common.manifest import write_json_atomic
from pipeline.common.records import DecisionsError, QueryListError, decision_uids, load_query_list, uid_of_sample
from pipeline.common.logs import setup_logging

log = logging.getLogger(__name__)

CONTACT_SHEET_SAMPLES = 16
OK, EMPTY, CORRUPT = "ok", "empty", "corrupt"
TOP_QUERIES = 20


@dataclass
class Histogram:
    """Fixed-width bins over [low, high) plus under/overflow; exact count, sum, min and max."""
    low: float
    high: float
    bins: int
    counts: list[int] = field(default_factory=list)
    under: int = 0
    over: int = 0
    n: int = 0
    total: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def __post_init__(self):
        self.counts = self.counts or [0] * self.bins

    @property
    def width(self) -> float:
        return (self.high - self.low) / self.bins

    def add(self, value: float) -> None:
        self.n += 1
        self.total += value
        self.min, self.max = min(self.min, value), max(self.max, value)
        if value < self.low:
            self.under += 1
        elif value >= self.high:
            self.over += 1
        else:
            self.counts[int((value - self.low) / self.width)] += 1

    def quantile(self, q: float) -> float | None:
        """Approximate quantile: linear within the bin where the cumulative count reaches q, clamped to min/max."""
        if not self.n:
            return None
        target, seen = q * self.n, self.under
        if seen >= target:
            return self.min
        for i, count in enumerate(self.counts):
            if count and seen + count >= target:
                value = self.low + (i + (target - seen) / count) * self.width
                return min(self.max, max(self.min, value))
            seen += count
        return self.max

    def summary(self) -> dict:
        if not self.n:
            return {"n": 0}
        return {"n": self.n, "mean": round(self.total / self.n, 3), "min": self.min, "max": self.max,
                **{f"p{int(q * 100)}": round(self.quantile(q), 3) for q in (0.05, 0.5, 0.95)},
                "bins": {"low": self.low, "high": self.high, "width": self.width, "counts": self.counts,
                         "under": self.under, "over": self.over}}


@dataclass
class ShardStats:
    """Everything the report needs, updated one sample at a time."""
    words: Histogram = field(default_factory=lambda: Histogram(0, 128, 128))
    chars: Histogram = field(default_factory=lambda: Histogram(0, 1024, 128))
    width: Histogram = field(default_factory=lambda: Histogram(0, 2048, 128))
    height: Histogram = field(default_factory=lambda: Histogram(0, 2048, 128))
    original_width: Histogram = field(default_factory=lambda: Histogram(0, 4096, 128))
    original_height: Histogram = field(default_factory=lambda: Histogram(0, 4096, 128))
    log2_aspect: Histogram = field(default_factory=lambda: Histogram(-3, 3, 60))  # log2(width / height)
    image_bytes: Histogram = field(default_factory=lambda: Histogram(0, 256 << 10, 128))
    per_query: collections.Counter = field(default_factory=collections.Counter)
    samples: int = 0
    excluded: int = 0
    exclude: frozenset = frozenset()
    bytes: int = 0
    shards: list[dict] = field(default_factory=list)
    reservoir: list[tuple[bytes, str]] = field(default_factory=list)
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def add_sample(self, sample: dict[str, bytes]) -> None:
        self.samples += 1
        caption = sample.get("txt", b"").decode("utf-8", "replace")
        self.words.add(len(caption.split()))
        self.chars.add(len(caption))
        meta = parse_json(sample.get("json"))
        for name in ("width", "height", "original_width", "original_height"):
            if isinstance(meta.get(name), (int, float)):
                getattr(self, name).add(meta[name])
        if meta.get("width") and meta.get("height"):
            self.log2_aspect.add(math.log2(meta["width"] / meta["height"]))
        self.per_query.update(q for q in meta.get("query_ids") or [] if isinstance(q, int))
        image = image_member(sample)
        if image is not None:
            self.image_bytes.add(len(image))
            self.keep_for_contact_sheet(image, caption)

    def keep_for_contact_sheet(self, image: bytes, caption: str) -> None:
        """Reservoir sampling (Algorithm R): each image ends in the sheet with the same probability."""
        if len(self.reservoir) < CONTACT_SHEET_SAMPLES:
            self.reservoir.append((image, caption))
            return
        slot = self.rng.randrange(self.image_bytes.n)
        if slot < CONTACT_SHEET_SAMPLES:
            self.reservoir[slot] = (image, caption)


def parse_json(raw: bytes | None) -> dict:
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def iter_tar_samples(fileobj) -> Iterator[dict[str, bytes]]:
    """Samples ('__key__' and ext -> bytes) of a seekable tar file, grouping consecutive members by key.

    Read with `pipeline.common.rawtar` (img2dataset's per-file PAX headers on its fast path). Raises
    tarfile.ReadError if the archive is cut anywhere, end-of-archive block included, after yielding the
    sample whose members were read before the break.
    """
    current: dict[str, bytes] = {}
    try:
        for member in rawtar.iter_members(fileobj):
            key, ext = rawtar.sample_key(member.name)
            if current and current["__key__"] != key:
                yield current
                current = {}
            current["__key__"] = key
            current[ext] = member.data
    except tarfile.ReadError:
        if current:
            yield current
        raise
    if current:
        yield current


def read_shard(path: str, stats: ShardStats, budget: int | None) -> dict:
    """Add one shard's samples to stats (at most budget); return its entry: status, samples, bytes, error."""
    entry = {"path": path, "status": OK, "samples": 0, "bytes": 0, "error": None}
    try:
        entry["bytes"] = files.size(path)
        if not entry["bytes"]:
            entry["status"] = EMPTY
            return entry
        with files.open_file(path, "rb") as f:
            for sample in iter_tar_samples(f):
                if stats.exclude and uid_of_sample(sample["__key__"], sample) in stats.exclude:
                    stats.excluded += 1
                    continue
                stats.add_sample(sample)
                entry["samples"] += 1
                if budget is not None and entry["samples"] >= budget:
                    break
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        entry["status"], entry["error"] = CORRUPT, f"{type(err).__name__}: {err}"
    if entry["status"] == OK and entry["samples"] == 0:
        entry["status"] = EMPTY
    stats.bytes += entry["bytes"]
    return entry


def download_outcome(folder: str) -> dict:
    """Success rate and failure reasons summed over img2dataset's `*_stats.json` files in the folder."""
    totals, reasons, read = collections.Counter(), collections.Counter(), 0
    for stats_path in files.find(files.join(folder, "*_stats.json")):
        try:
            with files.open_file(stats_path, "r") as f:
                stats = json.load(f)
            counts = {k: int(stats[k]) for k in ("count", "successes", "failed_to_download", "failed_to_resize")}
            messages = stats.get("status_dict") or {}  # {error message or "success": count}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            log.warning("stats: skipping unreadable %s (%s)", stats_path, err)
            continue
        read += 1
        totals.update(counts)
        for message, n in messages.items():
            if message != "success":
                reasons[failure_reason(message)] += int(n)
    count = totals["count"]
    return {"stats_files": read, **dict(totals), "success_rate": round(totals["successes"] / count, 4) if count else None,
            "failure_reasons": dict(reasons.most_common()), "manifest_counters": manifest_counters(folder)}


def manifest_counters(folder: str) -> dict | None:
    """The counters of the `shards` manifest in the folder (one final outcome per input row), if there is one.

    They differ from the `_stats.json` sums after `--retry-failed`: those count attempts, a row retried twice
    counts twice there, and rows refused before download are not in them at all.
    """
    try:
        with files.open_file(files.join(folder, "manifest.json"), "r") as f:
            counters = json.load(f).get("counters")
    except (OSError, ValueError, AttributeError):
        return None
    return counters if isinstance(counters, dict) else None


def query_report(per_query: collections.Counter, names: list[str] | None) -> dict:
    """Top and tail entries by sample count, and (with the query list) the entries with no sample."""
    def named(qid):
        return names[qid] if names is not None and 0 <= qid < len(names) else str(qid)
    ranked = per_query.most_common()
    report = {"queries_with_samples": len(ranked),
              "top": [{"query_id": q, "query": named(q), "samples": n} for q, n in ranked[:TOP_QUERIES]],
              "tail": [{"query_id": q, "query": named(q), "samples": n} for q, n in ranked[-TOP_QUERIES:][::-1]]}
    if names is not None:
        zero = [i for i in range(len(names)) if per_query[i] == 0]
        report |= {"queries_in_list": len(names), "zero_sample_queries": len(zero),
                   "zero_sample_examples": [names[i] for i in zero[:TOP_QUERIES]]}
    return report


def collect(shard_paths: list[str], max_samples: int | None, exclude: frozenset = frozenset()) -> ShardStats:
    stats = ShardStats(exclude=exclude)
    with tqdm(shard_paths, desc="stats", unit="shard", disable=None) as bar:
        for path in bar:
            budget = None if max_samples is None else max_samples - stats.samples
            if budget is not None and budget <= 0:
                break
            stats.shards.append(read_shard(path, stats, budget))
            bar.set_postfix(samples=stats.samples)
    return stats


def build_report(stats: ShardStats, folder: str, names: list[str] | None, seconds: float) -> dict:
    counts = [s["samples"] for s in stats.shards if s["status"] == OK]
    return {
        "shards": {"read": len(stats.shards), "ok": len(counts),
                   "empty": [s["path"] for s in stats.shards if s["status"] == EMPTY],
                   "corrupt": [{"path": s["path"], "samples_before_error": s["samples"], "error": s["error"]}
                               for s in stats.shards if s["status"] == CORRUPT]},
        "samples": stats.samples, "excluded_by_decisions": stats.excluded, "bytes": stats.bytes,
        "samples_per_shard": {"mean": round(sum(counts) / len(counts), 2) if counts else None,
                              "min": min(counts, default=None), "max": max(counts, default=None)},
        "captions": {"words": stats.words.summary(), "chars": stats.chars.summary()},
        "images": {name: getattr(stats, name).summary() for name in
                   ("width", "height", "original_width", "original_height", "log2_aspect", "image_bytes")},
        "queries": query_report(stats.per_query, names),
        "download": download_outcome(folder),
        "read_seconds": round(seconds, 3), "samples_per_s": round(stats.samples / seconds, 1) if seconds else None,
    }


# ---- rendering ----

def markdown(report: dict, folder: str) -> str:
    sh, dl, cap, img = report["shards"], report["download"], report["captions"], report["images"]
    per_shard = report["samples_per_shard"]
    lines = [f"# Shard statistics: `{folder}`", "",
             (f"- samples: {report['samples']:,} in {sh['read']} shards ({report['bytes'] / 2**20:.1f} MiB); "
              f"samples per shard: mean {per_shard['mean']}, min {per_shard['min']}, max {per_shard['max']}"),
             f"- excluded by dedup decisions (`--exclude`, left out of every figure): {report['excluded_by_decisions']:,}",
             f"- empty shards: {len(sh['empty'])} {', '.join(f'`{p}`' for p in sh['empty'])}",
             f"- corrupt shards: {len(sh['corrupt'])} " + ", ".join(
                 f"`{c['path']}` ({c['samples_before_error']} samples read; {c['error']})" for c in sh["corrupt"]),
             "", "## Download outcome (`*_stats.json`)", ""]
    if dl["stats_files"]:
        lines += [f"- attempted {dl['count']:,}, downloaded {dl['successes']:,} (success rate {dl['success_rate']:.1%})",
                  "", "| failure reason | rows |", "|---|---:|"]
        lines += [f"| {reason} | {n:,} |" for reason, n in dl["failure_reasons"].items()]
    else:
        lines.append("- no `_stats.json` files in the folder")
    if dl["manifest_counters"]:
        mc = dl["manifest_counters"]
        lines += ["", f"Per input row (`manifest.json` of `shards`): read {mc.get('read', 0):,}, kept {mc.get('kept', 0):,}; "
                  + ", ".join(f"{reason} {n:,}" for reason, n in (mc.get("rejected") or {}).items())]
    lines += ["", "## Captions and images", "", "| measure | mean | p5 | median | p95 | max |", "|---|---:|---:|---:|---:|---:|"]
    rows = [("caption words", cap["words"]), ("caption chars", cap["chars"]), ("width", img["width"]),
            ("height", img["height"]), ("original width", img["original_width"]),
            ("original height", img["original_height"]), ("image bytes", img["image_bytes"])]
    lines += [f"| {name} | {h.get('mean', '-')} | {h.get('p5', '-')} | {h.get('p50', '-')} | {h.get('p95', '-')} | "
              f"{h.get('max', '-')} |" for name, h in rows]
    q = report["queries"]
    lines += ["", "## Samples per query", "", f"- queries with samples: {q['queries_with_samples']:,}"]
    if "queries_in_list" in q:
        lines.append(f"- queries in the list: {q['queries_in_list']:,}; with zero samples: {q['zero_sample_queries']:,} "
                     f"(e.g. {', '.join(q['zero_sample_examples'][:10])})")
    lines += ["", "| top query | samples | | tail query | samples |", "|---|---:|---|---|---:|"]
    for top, tail in zip(q["top"], q["tail"]):
        lines.append(f"| {top['query']} | {top['samples']} | | {tail['query']} | {tail['samples']} |")
    lines += ["", "Plots: `captions.png`, `images.png`, `queries.png`, `contact_sheet.png`.",
              f"Read in {report['read_seconds']} s ({report['samples_per_s']} samples/s).", ""]
    return "\n".join(lines)


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported only when plotting."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str) -> None:
    with files.atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=80)
    pyplot().close(fig)


def plot_histograms(path: str, panels: list[tuple[str, Histogram]]) -> None:
    fig, axes = pyplot().subplots(1, len(panels), figsize=(5 * len(panels), 3.5))
    for ax, (title, hist) in zip(axes, panels):
        edges = [hist.low + i * hist.width for i in range(hist.bins + 1)]
        ax.stairs(hist.counts, edges, fill=True)  # one artist, not one rectangle per bin: 20x faster to draw
        ax.set_title(f"{title} (n={hist.n:,}; {hist.over} above {hist.high:g})")
        ax.set_ylabel("samples")
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.1, top=0.88, wspace=0.25)  # tight_layout costs seconds
    save_figure(fig, path)


def plot_queries(path: str, per_query: collections.Counter) -> None:
    counts = sorted(per_query.values(), reverse=True)
    fig, ax = pyplot().subplots(figsize=(6, 4))
    if counts:
        ax.loglog(range(1, len(counts) + 1), counts, marker=".", linestyle="none")
    ax.set_xlabel("query rank")
    ax.set_ylabel("samples")
    ax.set_title("samples per query (rank-frequency)")
    save_figure(fig, path)


def plot_contact_sheet(path: str, reservoir: list[tuple[bytes, str]], columns: int = 4, tile: int = 192) -> None:
    """A grid of thumbnails with their captions, drawn with PIL (a matplotlib grid costs 10x more time)."""
    from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError
    caption_h, chars_per_line = 36, tile // 6
    rows = max(1, math.ceil(len(reservoir) / columns))
    sheet = Image.new("RGB", (columns * tile, rows * (tile + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, caption) in enumerate(reservoir):
        x, y = (i % columns) * tile, (i // columns) * (tile + caption_h)
        try:
            with Image.open(io.BytesIO(image)) as img:
                img.draft("RGB", (tile, tile))  # JPEG: decode at reduced size, enough for a thumbnail
                thumb = ImageOps.contain(img.convert("RGB"), (tile - 4, tile - 4))
                sheet.paste(thumb, (x + (tile - thumb.width) // 2, y + (tile - thumb.height) // 2))
        except (UnidentifiedImageError, OSError):
            draw.text((x + 8, y + tile // 2), "(undecodable)", fill="red")
        lines = textwrap.wrap(caption, chars_per_line)[:3] or [""]
        draw.multiline_text((x + 4, y + tile), "\n".join(lines), fill="black", spacing=1)
    with files.atomic_write(path) as f:
        sheet.save(f, format="PNG")


def write_outputs(out: str, report: dict, stats: ShardStats, folder: str) -> None:
    files.makedirs(out)
    write_json_atomic(files.join(out, "stats.json"), report)
    files.write_text(files.join(out, "stats.md"), markdown(report, folder))
    plot_histograms(files.join(out, "captions.png"), [("caption words", stats.words), ("caption chars", stats.chars)])
    plot_histograms(files.join(out, "images.png"), [("width", stats.width), ("height", stats.height),
                                                    ("log2(width/height)", stats.log2_aspect)])
    plot_queries(files.join(out, "queries.png"), stats.per_query)
    plot_contact_sheet(files.join(out, "contact_sheet.png"), stats.reservoir)


def shard_folder(spec: str, paths: list[str]) -> str:
    """The folder holding the shards (for `_stats.json`): the spec if it is one, else the first shard's."""
    return spec if files.isdir(spec) else files.parent(paths[0])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.stats", description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", required=True, help="shard folder, glob or brace pattern of .tar files (local or fsspec)")
    p.add_argument("--out", default="reports/stats", help="report folder (default reports/stats)")
    p.add_argument("--queries", help="queries.tsv, to name the queries and list those without samples")
    p.add_argument("--max-samples", type=int, help="stop after this many samples")
    p.add_argument("--exclude", nargs="+", action="extend", default=[], metavar="DECISIONS",
                   help="leave out the uids of these dedup decisions (decisions.parquet files or dedup output folders), "
                        "as train.train --exclude does")
    args = p.parse_args(argv)
    if args.max_samples is not None and args.max_samples < 1:
        p.error("--max-samples must be positive")
    return args


def run(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        names = load_query_list(args.queries) if args.queries else None
        exclude = decision_uids(args.exclude)
    except (QueryListError, DecisionsError) as err:
        raise SystemExit(f"stats: {err}") from None
    try:
        paths = files.expand(args.shards, ".tar")
    except files.NoFilesError as err:
        raise SystemExit(f"stats: {err}") from None
    start = time.monotonic()
    stats = collect(paths, args.max_samples, exclude)
    folder = shard_folder(args.shards, paths)
    report = build_report(stats, folder, names, time.monotonic() - start)
    write_outputs(args.out, report, stats, folder)
    sh, dl = report["shards"], report["download"]
    log.info("stats: %d samples in %d shards (%d empty, %d corrupt); download success rate %s -> %s",
             report["samples"], sh["read"], len(sh["empty"]), len(sh["corrupt"]), dl["success_rate"], args.out)
    return report


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    run(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
