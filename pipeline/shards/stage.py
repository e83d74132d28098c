"""Stage 4 (`make shards`): download the balanced pairs into WebDataset shards with img2dataset.

In:  the balanced parquet of `balance` (`uid, url, caption, query_ids`, more columns ignored), a file,
     folder, glob or brace pattern, local or fsspec; optionally the `queries.tsv` the ids refer to
     (`--queries`), for names.
Out: `<out>/{00000..}.tar` in img2dataset's layout, one sample per downloaded image keyed by its `uid`:
     `<uid>.jpg`, `<uid>.txt` (caption), `<uid>.json` (uid, url, caption, query_ids, query_names, width, height,
     original_width, original_height, sha256, status); per shard `NNNNN.parquet` (every row attempted, with
     status and error_message) and `NNNNN_stats.json`; `_input/` (the prepared img2dataset input),
     `_rejected.parquet` (rows refused before any download, with a reason) and `manifest.json`, whose
     counters account for every input row: kept (downloaded) or rejected by reason (`failure_reason`).
Run: `python -m pipeline.shards --input 'work/balanced/*.parquet' --out shards/NAME [--queries Q.tsv]`
     (`make shards`); rerun the same command to resume; add `--retry-failed` to retry transient failures.
Decisions (img2dataset integration, defaults, resume, retries, limits): the comment below the imports.
Numbers: BENCHMARKS.md, "Download to shards".
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import json
import logging
import math
import os
import re
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from pipeline.common.downloads import NOT_WRITTEN, SHARD_FAILED, failure_reason, is_transient
from pipeline.common import files
from pipeline.common.files import NoFilesError, expand, find
from pipeline.common.manifest import file_info, write_json_atomic, write_manifest
from pipeline.common.records import QueryListError, load_query_list
from pipeline.shards.netguard import FetchPolicy, build_guarded_opener, url_refusal

# img2dataset imports albumentations, which checks PyPI for updates on import unless NO_ALBUMENTATIONS_UPDATE=1:
# the entry points (`python -m pipeline.shards`, the Makefile, the tests' conftest) set it; a library caller sets it.
import img2dataset  # noqa: F401
from img2dataset.downloader import Downloader
from img2dataset.writer import WebDatasetSampleWriter
from pipeline.common.logs import setup_logging

# Decisions
# - img2dataset's own `download()` does the work (reader, multiprocessing/pyspark/ray distributors,
#   incremental resume). Two of its pieces are swapped for ours by substituting its `Downloader` with
#   `GuardedDownloader`, a subclass that (1) writes samples under `uid` instead of img2dataset's shard-index key
#   (1.47 has no key option), and (2) installs the `pipeline.shards.netguard` opener in each worker process
#   before fetching, so address, scheme, body-size and decompression-bomb checks apply to every request and
#   redirect. Rows whose URL can be refused without a look-up (scheme, IP literal) never reach img2dataset.
# - Defaults for CLIP training: short side resized to 256 keeping the aspect ratio (`keep_ratio`), never
#   upscaled: CLIP trains at 224 and a 256 short side leaves room for random-resized crops (the OpenAI and
#   open_clip recipes resize then crop) at a quarter of the pixels of 512. Minimum short side 64 px
#   (icons and tracking pixels carry no content at 224), aspect ratio at most 3 (DataComp's basic filter),
#   JPEG quality 95 (img2dataset's default), timeout 10 s, no in-run retries (use `--retry-failed`, which
#   retries only transient failures), `X-Robots-Tag` noai/noimageai/noindex/noimageindex honoured, user agent
#   token `witbuild`, one process per core with 32 threads each (downloads wait on the network, not the CPU).
# - Resume: img2dataset's incremental mode skips shards whose `_stats.json` exists; the prepared input is
#   reused only if the inputs and the refusal settings are unchanged (else a clear error), so shard ids
#   keep pointing at the same rows and the counters, recomputed from the per-shard parquets, stay right.
#   Shards cut off mid-write (a tar without `_stats.json`) are deleted and redone. `manifest.json` is removed
#   when a run starts and written when it ends: img2dataset reads every `*.json` in the folder as shard stats.
# - `--retry-failed` takes the rows whose latest attempt failed with a transient reason (`TRANSIENT_REASONS`,
#   5xx, 408, 429), writes them to `_retry/round-K.parquet` and downloads them into new shards after the
#   last one (img2dataset's `extend` mode). An interrupted retry round is not resumed as such: rerunning
#   `--retry-failed` starts a new round from the rows still failing (shards of the broken round are removed).
# - Distributed: `--distributor pyspark` runs on the active Spark session (or a local one), `ray` on a Ray
#   cluster; workers need this package installed, since they unpickle `GuardedDownloader` from it.
# - Limits: `uid`s are taken as unique (the `match` stage keys pairs by them); a repeated uid would give two
#   samples with one key. The guard's opener is installed process-wide in each download worker. The retry
#   bookkeeping holds one entry per retried row in memory (transient failures only, a few % of a pool).

# The module, not the package attribute: img2dataset/__init__.py rebinds `img2dataset.main` to a function.
i2d_main = importlib.import_module("img2dataset.main")

log = logging.getLogger(__name__)

STAGE = "shards"
INPUT_COLUMNS = ["uid", "url", "caption", "query_ids"]
OOM_SHARD_COUNT = 5  # shard names 00000..99999, img2dataset's default
SUCCESS = "success"
DISALLOWED_HEADER_DIRECTIVES = "noai,noimageai,noindex,noimageindex"  # img2dataset's default set

# ---- img2dataset integration ----

class UidWebDatasetSampleWriter(WebDatasetSampleWriter):
    """img2dataset's WebDataset writer, with the sample key (tar member names, parquet `key`) set to `uid`."""

    def write(self, img_str, key, caption, meta):
        uid = meta.get("uid")
        if uid:
            key = meta["key"] = uid
        super().write(img_str, key, caption, meta)


class GuardedDownloader(Downloader):
    """img2dataset's Downloader that fetches through the netguard opener and keys samples by uid."""

    def __init__(self, *args, policy: FetchPolicy, **kwargs):
        super().__init__(*args, **kwargs)
        self.policy = policy
        if self.sample_writer_class is WebDatasetSampleWriter:
            self.sample_writer_class = UidWebDatasetSampleWriter

    def __call__(self, row):
        # Runs in the worker process (after unpickling), once per shard: urlopen uses the installed opener.
        Image.MAX_IMAGE_PIXELS = self.policy.max_pixels
        urllib.request.install_opener(build_guarded_opener(self.policy))
        return super().__call__(row)


@contextlib.contextmanager
def guarded_downloads(policy: FetchPolicy) -> Iterator[None]:
    """Within the block, img2dataset's download() builds a GuardedDownloader with this policy."""
    original = i2d_main.Downloader
    i2d_main.Downloader = functools.partial(GuardedDownloader, policy=policy)
    try:
        yield
    finally:
        i2d_main.Downloader = original


@dataclasses.dataclass(frozen=True)
class DownloadSettings:
    """What img2dataset is asked to do: the stage's flags about images, workers and politeness."""
    out: str
    image_size: int = 256
    resize_mode: str = "keep_ratio"
    resize_only_if_bigger: bool = True
    encode_quality: int = 95
    min_image_size: int = 64
    max_aspect_ratio: float = 3.0
    max_pixels: int = FetchPolicy.max_pixels
    timeout: int = 10
    retries: int = 0
    samples_per_shard: int = 10_000
    processes: int = 1
    threads: int = 32
    distributor: str = "multiprocessing"
    user_agent_token: str = "witbuild"
    disallowed_header_directives: str = DISALLOWED_HEADER_DIRECTIVES


@dataclasses.dataclass(frozen=True)
class ShardsSettings:
    """The stage's flags, parsed once by `run`; each helper gets the part it needs."""
    input: str | None
    queries: str | None
    allow_loopback: bool
    max_bytes: int
    retry_failed: bool
    download: DownloadSettings

    @property
    def out(self) -> str:
        return self.download.out

    def policy(self) -> FetchPolicy:
        """The fetch policy of every request and redirect (netguard)."""
        return FetchPolicy(allow_loopback=self.allow_loopback, max_bytes=self.max_bytes,
                           max_pixels=self.download.max_pixels, body_timeout=3.0 * self.download.timeout)


def settings_of(args: argparse.Namespace) -> ShardsSettings:
    download = DownloadSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DownloadSettings)})
    return ShardsSettings(args.input, args.queries, args.allow_loopback, args.max_bytes, args.retry_failed, download)


def download_settings(d: DownloadSettings, url_list: str, extra_columns: list[str], mode: str) -> dict:
    """Keyword arguments of img2dataset.download for this run (the bench passes the same to bare img2dataset)."""
    return {
        "url_list": url_list, "output_folder": d.out, "input_format": "parquet", "url_col": "url",
        "caption_col": "caption", "save_additional_columns": extra_columns, "output_format": "webdataset",
        "encode_format": "jpg", "image_size": d.image_size, "resize_mode": d.resize_mode,
        "resize_only_if_bigger": d.resize_only_if_bigger, "encode_quality": d.encode_quality,
        "min_image_size": d.min_image_size, "max_image_area": d.max_pixels,
        "max_aspect_ratio": d.max_aspect_ratio, "processes_count": d.processes, "thread_count": d.threads,
        "number_sample_per_shard": d.samples_per_shard, "timeout": d.timeout, "retries": d.retries,
        "distributor": d.distributor, "incremental_mode": mode, "oom_shard_count": OOM_SHARD_COUNT,
        "compute_hash": "sha256", "extract_exif": False, "enable_wandb": False,
        "user_agent_token": d.user_agent_token,
        "disallowed_header_directives": [x for x in d.disallowed_header_directives.split(",") if x],
    }


# ---- preparing the input ----

def query_names(query_ids: Iterable[int] | None, names: list[str]) -> list[str | None]:
    """Names of query ids (None for an id outside the list)."""
    return [names[i] if 0 <= i < len(names) else None for i in (query_ids or [])]


def split_batch(batch: pa.RecordBatch, names: list[str] | None, allow_loopback: bool) -> tuple[pa.Table, pa.Table]:
    """(rows to download, rows refused before download with `reason`) from one input batch."""
    table = pa.Table.from_batches([batch]).select(INPUT_COLUMNS)
    reasons = [url_refusal(url, allow_loopback) for url in table.column("url").to_pylist()]
    keep = pa.array([r is None for r in reasons], pa.bool_())
    kept = table.filter(keep)
    if names is not None:
        kept = kept.append_column("query_names", pa.array(
            [query_names(ids, names) for ids in kept.column("query_ids").to_pylist()], pa.list_(pa.string())))
    refused = table.filter(pc.invert(keep)).select(["uid", "url"])
    refused = refused.append_column("reason", pa.array([r for r in reasons if r is not None], pa.string()))
    return kept, refused


def open_input(path: str) -> pq.ParquetFile:
    """The parquet file at path with the input columns, or SystemExit with a one-line reason."""
    try:
        parquet = pq.ParquetFile(files.open_file(path, "rb"))
    except (OSError, pa.ArrowInvalid) as err:
        raise SystemExit(f"shards: {path}: not a readable parquet file ({err})") from None
    missing = [c for c in INPUT_COLUMNS if c not in parquet.schema_arrow.names]
    if missing:
        raise SystemExit(f"shards: {path}: missing column(s) {', '.join(missing)} (expected the output of `balance`)")
    return parquet


def prepare_input(inputs: list[dict], out: str, names: list[str] | None, allow_loopback: bool,
                  fingerprint: dict) -> dict:
    """Write `<out>/_input/part-NNNNN.parquet` (one per input file) and `<out>/_rejected.parquet`; return the summary."""
    files.makedirs(files.join(out, "_input"))
    if files.exists(files.join(out, "_rejected.parquet")):
        files.remove([files.join(out, "_rejected.parquet")])  # from an earlier preparation of other inputs
    read, rejected, rows_per_file = 0, collections.Counter(), []
    with contextlib.ExitStack() as stack:
        refused_writer = None
        for index, info in enumerate(inputs):
            parquet = open_input(info["path"])
            # An empty file still gets one prepared file with the full schema (img2dataset selects its columns).
            batches = parquet.iter_batches(batch_size=65_536, columns=INPUT_COLUMNS) if parquet.metadata.num_rows \
                else [pa.RecordBatch.from_pylist([], schema=parquet.schema_arrow)]
            kept_rows = 0
            with files.atomic_write(files.join(out, "_input", f"part-{index:05d}.parquet")) as f:
                writer = None
                for batch in batches:
                    kept, refused = split_batch(batch, names, allow_loopback)
                    writer = writer or pq.ParquetWriter(f, kept.schema)
                    writer.write_table(kept)
                    read, kept_rows = read + batch.num_rows, kept_rows + kept.num_rows
                    rejected.update(refused.column("reason").to_pylist())
                    if refused.num_rows and refused_writer is None:
                        refused_file = stack.enter_context(files.atomic_write(files.join(out, "_rejected.parquet")))
                        refused_writer = stack.enter_context(pq.ParquetWriter(refused_file, refused.schema))
                    if refused.num_rows:
                        refused_writer.write_table(refused)
                writer.close()
            rows_per_file.append(kept_rows)
    prepared = {"fingerprint": fingerprint, "read": read, "rejected": dict(rejected), "rows_per_file": rows_per_file,
                "extra_columns": ["uid", "query_ids"] + (["query_names"] if names is not None else [])}
    write_json_atomic(f"{out}/_input/_prepared.json", prepared)
    return prepared


def load_prepared(out: str) -> dict | None:
    path = files.join(out, "_input", "_prepared.json")
    if not files.exists(path):
        return None
    with files.open_file(path, "r") as f:
        return json.load(f)


def shard_sizes(rows_per_file: list[int], per_shard: int) -> list[int]:
    """Rows in each main shard, as img2dataset's reader cuts them (each input file into ceil(n/per_shard))."""
    sizes = []
    for rows in rows_per_file:
        sizes += [min(per_shard, rows - i * per_shard) for i in range(math.ceil(rows / per_shard))]
    return sizes


# ---- reading the outcome back ----

def shard_files(out: str) -> dict[int, dict[str, str]]:
    """{shard id: {"tar"|"parquet"|"stats": path}} of the numbered shard files in out."""
    found: dict[int, dict[str, str]] = collections.defaultdict(dict)
    for path in find(f"{out.rstrip('/')}/[0-9]*"):
        match = re.fullmatch(r"(\d+)(\.tar|\.parquet|_stats\.json)", path.rsplit("/", 1)[-1])
        if match:
            kind = {"_stats.json": "stats"}.get(match.group(2), match.group(2)[1:])
            found[int(match.group(1))][kind] = path
    return dict(found)


def remove_unfinished_shards(out: str) -> list[int]:
    """Delete tar/parquet files of shards without `_stats.json` (cut off mid-write); return their ids."""
    unfinished = {sid: found for sid, found in shard_files(out).items() if "stats" not in found}
    files.remove([path for found in unfinished.values() for path in found.values()])
    return sorted(unfinished)


def shard_rows(path: str, columns: list[str]) -> pa.Table:
    with files.open_file(path, "rb") as f:
        return pq.read_table(f, columns=columns)


def latest_outcomes(out: str, shard_ids: list[int]) -> dict[str, str]:
    """uid -> SUCCESS or failure reason of its latest attempt in these shards (in shard order)."""
    by_id, outcome = shard_files(out), {}
    for sid in sorted(shard_ids):
        rows = shard_rows(by_id[sid]["parquet"], ["uid", "status", "error_message"]).to_pydict()
        for uid, status, message in zip(rows["uid"], rows["status"], rows["error_message"]):
            if outcome.get(uid) != SUCCESS:
                outcome[uid] = SUCCESS if status == SUCCESS else failure_reason(message)
    return outcome


def account(out: str, prepared: dict, per_shard: int) -> dict:
    """Manifest counters over the main shards, with later retry rounds deciding the rows they retried."""
    sizes = shard_sizes(prepared["rows_per_file"], per_shard)
    by_id = shard_files(out)
    done = {sid for sid, f in by_id.items() if "stats" in f and "parquet" in f}
    retried = latest_outcomes(out, [sid for sid in done if sid >= len(sizes)])
    kept, rejected = 0, collections.Counter(prepared["rejected"])
    for sid, size in enumerate(sizes):
        if sid not in done:
            rejected[SHARD_FAILED] += size
            continue
        rows = shard_rows(by_id[sid]["parquet"], ["uid", "status", "error_message"]).to_pydict()
        for uid, status, message in zip(rows["uid"], rows["status"], rows["error_message"]):
            outcome = SUCCESS if status == SUCCESS else retried.get(uid, failure_reason(message))
            if outcome == SUCCESS:
                kept += 1
            else:
                rejected[outcome] += 1
        rejected[NOT_WRITTEN] += size - len(rows["uid"])
    return {"read": prepared["read"], "kept": kept,
            "rejected": {reason: n for reason, n in sorted(rejected.items()) if n}}


def retry_rows(out: str) -> pa.Table | None:
    """Rows (input columns) whose latest attempt failed with a transient reason, or None if there are none."""
    by_id = shard_files(out)
    done = sorted(sid for sid, f in by_id.items() if "stats" in f)
    outcome = latest_outcomes(out, done)
    wanted = {uid for uid, reason in outcome.items() if reason != SUCCESS and is_transient(reason)}
    parts, seen = [], set()
    for sid in done:
        table = shard_rows(by_id[sid]["parquet"], None)
        mask = [uid in wanted and uid not in seen and not seen.add(uid) for uid in table.column("uid").to_pylist()]
        columns = [c for c in table.column_names if c in INPUT_COLUMNS + ["query_names"]]
        parts.append(table.filter(pa.array(mask, pa.bool_())).select(columns))
    rows = pa.concat_tables(parts) if parts else None
    return rows if rows is not None and rows.num_rows else None


# ---- the command ----

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.shards", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", help="balanced parquet: glob or folder, local or fsspec (not needed with --retry-failed)")
    p.add_argument("--out", required=True, help="shard folder, e.g. shards/NAME")
    p.add_argument("--queries", help="queries.tsv whose ids the input's query_ids refer to (adds query names)")
    p.add_argument("--image-size", type=int, default=256, help="target size of the short side (default 256)")
    p.add_argument("--resize-mode", default="keep_ratio",
                   choices=["no", "keep_ratio", "keep_ratio_largest", "center_crop", "border"])
    p.add_argument("--resize-only-if-bigger", action=argparse.BooleanOptionalAction, default=True,
                   help="never upscale (default on)")
    p.add_argument("--encode-quality", type=int, default=95)
    p.add_argument("--min-image-size", type=int, default=64, help="minimum short side in pixels")
    p.add_argument("--max-aspect-ratio", type=float, default=3.0)
    p.add_argument("--max-pixels", type=int, default=FetchPolicy.max_pixels, help="refuse larger images undecoded")
    p.add_argument("--max-bytes", type=int, default=FetchPolicy.max_bytes, help="refuse larger bodies")
    p.add_argument("--timeout", type=int, default=10, help="seconds per connect/read (the whole body gets 3x)")
    p.add_argument("--retries", type=int, default=0, help="in-run retries of each failed URL")
    p.add_argument("--samples-per-shard", type=int, default=10_000)
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    p.add_argument("--threads", type=int, default=32, help="download threads per process")
    p.add_argument("--distributor", default="multiprocessing", choices=["multiprocessing", "pyspark", "ray"])
    p.add_argument("--user-agent-token", default="witbuild")
    p.add_argument("--disallowed-header-directives", default=DISALLOWED_HEADER_DIRECTIVES,
                   help="comma-separated X-Robots-Tag directives that opt an image out ('' to ignore them)")
    p.add_argument("--allow-loopback", action="store_true", help="allow 127.0.0.0/8 and ::1 (tests and the demo)")
    p.add_argument("--retry-failed", action="store_true",
                   help="download again the rows whose latest attempt failed with a transient reason")
    args = p.parse_args(argv)
    if not args.retry_failed and not args.input:
        p.error("--input is required (unless --retry-failed)")
    if args.samples_per_shard < 1 or args.processes < 1 or args.threads < 1 or args.timeout < 1:
        p.error("--samples-per-shard, --processes, --threads and --timeout must be positive")
    if args.distributor != "multiprocessing" and importlib.util.find_spec(args.distributor) is None:
        p.error(f"--distributor {args.distributor} needs the {args.distributor} package (pip install {args.distributor})")
    return args


def run_main(s: ShardsSettings) -> dict:
    """Prepare (or reuse) the input and download the shards not finished yet; return the prepared summary."""
    try:
        inputs = [file_info(p) for p in expand(s.input, ".parquet")]
    except NoFilesError as err:
        raise SystemExit(f"shards: {err}") from None
    queries = file_info(s.queries) if s.queries else None
    fingerprint = {"inputs": inputs, "queries": queries, "allow_loopback": s.allow_loopback,
                   "samples_per_shard": s.download.samples_per_shard}
    prepared = load_prepared(s.out)
    if prepared is not None and prepared["fingerprint"] != fingerprint:
        if any("stats" in f for f in shard_files(s.out).values()):
            raise SystemExit(f"shards: {s.out} holds shards of other inputs or settings "
                             "(input files, --queries, --allow-loopback, --samples-per-shard); use a new --out")
        prepared = None
    if prepared is None:
        try:
            names = load_query_list(s.queries) if s.queries else None
        except QueryListError as err:
            raise SystemExit(f"shards: {err}") from None
        prepared = prepare_input(inputs, s.out, names, s.allow_loopback, fingerprint)
    if sum(prepared["rows_per_file"]):
        settings = download_settings(s.download, f"{s.out}/_input", prepared["extra_columns"], "incremental")
        with guarded_downloads(s.policy()):
            i2d_main.download(**settings)
    return prepared


def run_retry(s: ShardsSettings, prepared: dict) -> None:
    """One retry round: transient failures into new shards after the last one (s.download.samples_per_shard
    is the first run's)."""
    sizes = shard_sizes(prepared["rows_per_file"], prepared["fingerprint"]["samples_per_shard"])
    by_id = shard_files(s.out)
    if any("stats" not in by_id.get(sid, {}) for sid in range(len(sizes))):
        raise SystemExit(f"shards: {s.out}: the first run is unfinished; rerun without --retry-failed first")
    rows = retry_rows(s.out)
    if rows is None:
        log.info("shards: no transient failures to retry")
        return
    files.makedirs(files.join(s.out, "_retry"))
    rounds = find(files.join(s.out, "_retry", "round-*.parquet"))
    round_path = files.join(s.out, "_retry", f"round-{len(rounds) + 1:03d}.parquet")
    with files.atomic_write(round_path) as f:
        pq.write_table(rows, f)
    log.info("shards: retrying %d rows (%s)", rows.num_rows, round_path)
    extra = [c for c in ("uid", "query_ids", "query_names") if c in rows.column_names]
    with guarded_downloads(s.policy()):
        i2d_main.download(**download_settings(s.download, round_path, extra, "extend"))


def run(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    s = settings_of(args)
    start = time.monotonic()
    if files.exists(files.join(s.out, "manifest.json")):
        # stale once a run starts; img2dataset would also misread it as shard stats
        files.remove([files.join(s.out, "manifest.json")])
    removed = remove_unfinished_shards(s.out)
    if removed:
        log.info("shards: removed %d unfinished shard(s) %s; they are downloaded again", len(removed), removed[:10])
    if s.retry_failed:
        prepared = load_prepared(s.out)
        if prepared is None:
            raise SystemExit(f"shards: {s.out}: nothing to retry (no earlier run there)")
        # a retry round writes shards of the first run's size, whatever --samples-per-shard says now
        s = dataclasses.replace(s, download=dataclasses.replace(
            s.download, samples_per_shard=prepared["fingerprint"]["samples_per_shard"]))
        run_retry(s, prepared)
    else:
        prepared = run_main(s)
    per_shard = prepared["fingerprint"]["samples_per_shard"]
    counters = account(s.out, prepared, per_shard)
    by_id = shard_files(s.out)
    extra = {"shards": sum("tar" in f for f in by_id.values()),
             "main_shards": len(shard_sizes(prepared["rows_per_file"], per_shard))}
    manifest = write_manifest(s.out, stage=STAGE, settings=dict(vars(args), samples_per_shard=per_shard),
                              inputs=prepared["fingerprint"]["inputs"], counters=counters,
                              wall_time_s=time.monotonic() - start, extra=extra)
    log.info("shards: read %d, kept %d, rejected %s -> %s", counters["read"], counters["kept"],
             counters["rejected"], s.out)
    return manifest


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    run(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
