"""Benchmark of the trainer: the loader's samples per core next to a bare PIL decode, and training samples/s.

Measured in one run, on the same shards (given with --shards, or generated: smooth-noise 256 px JPEGs with
random captions, `demo/synthetic.py`, like img2dataset's default output, so no file from outside the
repository is needed), in interleaved rounds (the machine is shared: each round measures the references and
the loader back to back; the table gives medians and the median of the per-round ratios):
  - raw tar:     read every member's bytes with `tarfile` (I/O + tar parsing, one core);
  - pil_decode:  the same plus a full PIL decode to RGB (the reference the design names);
  - previous:    the loader's image path before issue 19 (PIL resize), for the before/after in one run;
  - loader:      train/data.py's pipeline as a GPU run uses it (`data.resize` "device"), in-process (tar ->
                 shuffle -> decode + draw the random resized crop for --image-size (224), crop copied onto
                 the batch's uint8 canvas -> batch + tokenize), one thread, as in a DataLoader worker; rates
                 are samples per CPU-second of the process, so per core;
  - resize in loader: the same pipeline as CPU training uses it (`data.resize` "loader": the crop resized to
                 --image-size in the loader, torch's uint8 antialiased bicubic);
  - device op on CPU: what the GPU run's batched crop + resize + normalise (`to_model_input` with boxes)
                 costs when it runs on the CPU instead (ms per sample, one thread): why CPU training
                 resizes in the loader;
  - cores per GPU: 1,500 and 2,500 samples/s (the ViT-B/32 target, and headroom) / the loader's rate;
  - loader xN:   the DataLoader with N workers, both ways, wall-clock samples/s and samples per CPU-second
                 of the workers (this includes what the in-process rate leaves out: handing each batch
                 over in shared memory, which is zero-filled when allocated);
  - training:    `train.train.main` for a few steps; samples/s and the share of step time spent waiting for
                 data, from its metrics.jsonl (intervals after the first third: compile and start-up excluded).
CPU mode (default) trains the tiny config on 64 px shards; `--device cuda --config train/configs/vit_b32.json
--steps 300` trains ViT-B/32 in bf16 on the GPU (resampled mode over the 256 px shards). `--loader-only`
measures the loader and prints one JSON line, writing nothing.
Results merge into bench/results/train.json (a GPU run keeps the CPU figures, and the other way round);
the `train` section of BENCHMARKS.md is rewritten from it.

Run: make bench   or   python -m bench.bench_train [--loader-only] [--image-size 224] [--shards 'dir/{0..9}.tar']
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import itertools
import json
import logging
import math
import os
import random
import resource
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.report import RESULTS, machine, machine_line, save_results, update_section
from train import config as config_lib
from train import train as trainer
from demo.synthetic import write_shards
from pipeline.common.files import expand
from pipeline.common.images import open_rgb
from pipeline.common.logs import setup_logging
from train.data import SkipCounter, make_loader, make_pipeline, random_resized_crop_box, tar_to_samples, to_model_input

ROOT = Path(__file__).resolve().parent.parent
TARGET_SAMPLES_PER_GPU = 1_500   # DESIGN.md: ViT-B/32 bf16 per H100
HEADROOM_SAMPLES_PER_GPU = 2_500  # what a faster step (compiled, larger GPU) could ask of the loader
TARGET_DATA_SHARE = 0.05         # DESIGN.md: data time < 5% of the step
TARGET_LOADER_RATIO = 0.7        # DESIGN.md: loader per core >= 0.7x a bare PIL decode
REFERENCE_A100 = 786             # open_clip ViT-B/32 on LAION-400M, samples/s per A100 (DESIGN.md)

log = logging.getLogger("bench.bench_train")


def time_raw(urls: list[str], decode: bool) -> dict:
    samples, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    for url in urls:
        with tarfile.open(url, "r|") as tar:
            for member in tar:
                data = tar.extractfile(member).read()
                if member.name.endswith(".jpg"):
                    samples += 1
                    if decode:
                        Image.open(io.BytesIO(data)).convert("RGB")
    return rates(samples, time.perf_counter() - wall0, time.process_time() - cpu0)


def time_loader(urls: list[str], data_cfg, image_size: int, context: int) -> dict:
    pipeline = make_pipeline(urls, data_cfg, image_size, context, seed=0, epoch=0)   # tokenizer build: ~0.4 s, once
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as in a DataLoader worker (torch sets 1 there)
    try:
        samples, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
        for batch in pipeline:
            samples += len(batch["keys"])
        return rates(samples, time.perf_counter() - wall0, time.process_time() - cpu0)
    finally:
        torch.set_num_threads(threads)


def time_device_op_on_cpu(urls: list[str], data_cfg, image_size: int, context: int, batches: int = 2) -> dict:
    """ms per sample of `to_model_input` with boxes (crop + resize + normalise) on the CPU, one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        samples, cpu = 0, 0.0
        for batch in itertools.islice(make_pipeline(urls, data_cfg, image_size, context, seed=0, epoch=0), batches):
            cpu0 = time.process_time()
            to_model_input(batch["images"], "cpu", batch["boxes"], batch["size"])
            cpu += time.process_time() - cpu0
            samples += len(batch["keys"])
        return {"samples": samples, "cpu_s": round(cpu, 2), "ms_per_sample": round(1000 * cpu / samples, 2)}
    finally:
        torch.set_num_threads(threads)


def time_dataloader(urls: list[str], data_cfg, image_size: int, context: int) -> dict:
    """Wall-clock samples/s of the DataLoader, and samples per CPU-second of its worker processes (their
    start, tokenizer build and shared-memory hand-over included; counted when they exit)."""
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    samples, wall0 = 0, time.perf_counter()
    for batch in make_loader(urls, data_cfg, image_size, context, seed=0, epoch=0):
        samples += len(batch["keys"])
    wall = time.perf_counter() - wall0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    worker_cpu = (children.ru_utime + children.ru_stime) - (children0.ru_utime + children0.ru_stime)
    return {"samples": samples, "wall_s": round(wall, 2), "samples_per_s": round(samples / wall, 1),
            "workers": data_cfg.workers, "samples_per_worker_cpu_s": round(samples / max(worker_cpu, 1e-9), 1)}


def rates(samples: int, wall: float, cpu: float) -> dict:
    return {"samples": samples, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "samples_per_cpu_s": round(samples / max(cpu, 1e-9), 1)}


def time_training(shards: str, config: str, device: str, steps: int, extra: list[str]) -> dict:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as out:
        log_every = max(1, steps // 10)
        trainer.main(["--shards", shards, "--config", str(config), "--out", out, "--steps", str(steps),
                      "--log-every", str(log_every), "--ckpt-every", str(10 * steps), "--device", device, *extra])
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in rows if r["step"] > steps / 3] or rows
    result = {"steps": steps, "config": os.path.relpath(config, ROOT),
              "samples_per_s": round(sum(r["samples_per_s"] for r in steady) / len(steady), 1),
              "data_share": round(sum(r["data_share"] for r in steady) / len(steady), 4),
              "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"], "extra_args": extra}
    if device == "cuda":
        result.update(gpu=torch.cuda.get_device_name(), peak_memory_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2))
    return result


def previous_transform(data: bytes, size: int, scale, rng: random.Random) -> np.ndarray:
    """The loader's image path before issue 19 (PIL decode with draft, PIL bicubic resize with the crop as box)."""
    image = open_rgb(data, math.ceil(size / 0.8))
    box = random_resized_crop_box(*image.size, scale, rng)
    return np.asarray(image.resize((size, size), Image.BICUBIC, box=box))


def time_previous_loader(urls: list[str], image_size: int) -> dict:
    """The previous image path in the same pipeline shape (tar -> decode + crop -> stack), tokenizer left out."""
    skips, rng = SkipCounter("raise"), random.Random(0)
    samples, batch, wall0, cpu0 = 0, [], time.perf_counter(), time.process_time()
    for sample in tar_to_samples([{"url": u} for u in urls], skips.handler):
        batch.append(previous_transform(sample["jpg"], image_size, (0.9, 1.0), rng))
        if len(batch) == 256:
            torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
            samples, batch = samples + len(batch), []
    return rates(samples + len(batch), time.perf_counter() - wall0, time.process_time() - cpu0)


def loader_per_core(urls: list[str], image_size: int, context: int, rounds: int = 3) -> dict:
    """Interleaved rounds of (raw tar, raw + PIL decode, loader, loader resizing, previous path); medians, the
    median per-round ratios; then the device op's cost on the CPU."""
    data_cfg = config_lib.DataCfg(batch_size=256, workers=0, shuffle_buffer=1_000, shuffle_initial=100, resize="device")
    cpu_cfg = dataclasses.replace(data_cfg, resize="loader")
    runs = {"raw_tar": [], "pil_decode": [], "loader": [], "loader_resizing": [], "previous_loader": []}
    for _ in range(rounds):
        runs["raw_tar"].append(time_raw(urls, decode=False))
        runs["pil_decode"].append(time_raw(urls, decode=True))
        runs["loader"].append(time_loader(urls, data_cfg, image_size, context))
        runs["loader_resizing"].append(time_loader(urls, cpu_cfg, image_size, context))
        runs["previous_loader"].append(time_previous_loader(urls, image_size))
    per_core = {name: statistics.median(r["samples_per_cpu_s"] for r in rs) for name, rs in runs.items()}

    def ratio(name: str) -> list[float]:
        return [lo["samples_per_cpu_s"] / pil["samples_per_cpu_s"] for lo, pil in zip(runs[name], runs["pil_decode"])]

    ratios, resizing = ratio("loader"), ratio("loader_resizing")
    device_op = time_device_op_on_cpu(urls, data_cfg, image_size, context)
    return {"image_size": image_size, "samples": runs["loader"][0]["samples"], "rounds": rounds, **per_core,
            "loader_vs_pil_decode": round(statistics.median(ratios), 3),
            "ratio_per_round": [round(r, 3) for r in ratios],
            "loader_resizing_vs_pil_decode": round(statistics.median(resizing), 3),
            "device_op_cpu_ms_per_sample": device_op["ms_per_sample"],
            "cores_per_gpu": {str(rate): round(rate / per_core["loader"], 1)
                              for rate in (TARGET_SAMPLES_PER_GPU, HEADROOM_SAMPLES_PER_GPU)}}


def loader_suite(urls: list[str], image_size: int, context: int, workers: int, rounds: int = 3) -> dict:
    result = loader_per_core(urls, image_size, context, rounds)
    data_cfg = config_lib.DataCfg(batch_size=256, workers=workers, shuffle_buffer=1_000, shuffle_initial=100,
                                  resize="device")
    result["loader_workers"] = time_dataloader(urls, data_cfg, image_size, context)
    result["loader_resizing_workers"] = time_dataloader(urls, dataclasses.replace(data_cfg, resize="loader"),
                                                        image_size, context)
    return result


def generated_shards(out: Path, shards: int, per_shard: int, image_size: int,
                     kind: str = "noise") -> tuple[str, list[str]]:
    paths = write_shards(out, kind, shards=shards, per_shard=per_shard, image_size=image_size, seed=0,
                         processes=os.cpu_count() or 1)
    bytes_per_sample = sum(Path(p).stat().st_size for p in paths) / (shards * per_shard)
    log.info("generated %d %s shards x %d samples of %d px (%.1f KB per sample)", shards, kind, per_shard, image_size,
             bytes_per_sample / 1e3)
    return f"{out}/{{00000..{shards - 1:05d}}}.tar", paths


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", help="brace pattern of local shards (default: generated 256 px JPEGs)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--config", default=str(ROOT / "train" / "configs" / "tiny.json"))
    parser.add_argument("--steps", type=int, default=0, help="training steps (default: 60 on CPU, 300 on CUDA)")
    parser.add_argument("--batch-size", type=int, default=0, help="per GPU/process (default: the config's)")
    parser.add_argument("--workers", type=int, default=0, help="loader workers (default: cores - 1, at most 12)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--loader-only", action="store_true",
                        help="measure the loader, print one JSON line, write nothing")
    parser.add_argument("--image-size", type=int, default=224,
                        help="the loader's output size (default 224, ViT-B/32's)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the loader measurement")
    args = parser.parse_args(argv)
    setup_logging()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible")
    cfg = config_lib.load(args.config)
    workers = args.workers or max(1, min(12, (os.cpu_count() or 2) - 1))
    context = config_lib.TextCfg().context_length   # the loader's tokenizer at CLIP's 77, whatever the config

    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        if args.shards:
            shards, urls = args.shards, expand(args.shards, ".tar", check_named=False)
        else:   # 256 px like img2dataset's default output; the GPU run resamples them for as many steps as asked
            shards, urls = generated_shards(Path(tmp) / "256", shards=40 if cuda else 8, per_shard=256 if cuda else 128,
                                            image_size=256)
        if args.loader_only:
            result = {"machine": machine(), **loader_per_core(urls, args.image_size, context, args.rounds)}
            print(json.dumps(result))
            return result
        results = json.loads((RESULTS / "train.json").read_text()) if (RESULTS / "train.json").exists() else {}
        results["machine"] = machine()
        loader = loader_suite(urls, args.image_size, context, workers, args.rounds)
        steps = args.steps or (300 if cuda else 60)
        batch = args.batch_size or cfg.data.batch_size
        extra = ["--batch-size", str(batch), "--workers", str(workers)]
        if cuda:
            extra += ["--resampled", "--epoch-samples", str(steps * batch)] + (["--compile"] if args.compile else [])
            results["gpu_loader"] = loader
            results["gpu_train"] = time_training(shards, args.config, "cuda", steps, extra)
        else:
            results["loader"] = loader
            if not args.shards:   # the tiny model's 32 px input: small shards train faster
                shards, _ = generated_shards(Path(tmp) / "64", shards=8, per_shard=250, image_size=64)
            results["cpu_train"] = time_training(shards, args.config, "cpu", steps, extra)
    results.pop("cpu_loader", None)   # the 32 px loader figure of earlier runs: replaced by `loader`
    save_results("train", results)
    update_section("train", markdown(results))
    return results


def loader_rows(r: dict) -> str:
    pil = r["pil_decode"]
    rows = [("raw `tarfile` read (reference)", r["raw_tar"], ""),
            ("raw read + PIL decode to RGB (reference)", pil, "1.00"),
            (f"loader as a GPU run uses it: decode + random resized crop box, crop onto the uint8 canvas + batch + "
             f"tokenize (resized to {r['image_size']} px on the device)", r["loader"],
             f"**{r['loader_vs_pil_decode']:.2f}** (target >= {TARGET_LOADER_RATIO})"),
            *([(f"loader as CPU training uses it: crop resized to {r['image_size']} px in the loader (torch uint8 "
                "antialiased bicubic)", r["loader_resizing"], f"{r['loader_resizing_vs_pil_decode']:.2f}")]
              if "loader_resizing" in r else []),
            ("previous image path (PIL decode + PIL resize with box + stack; no tokenizer)", r["previous_loader"],
             f"{r['previous_loader'] / pil:.2f}")]
    lines = [f"| {name} | {rate:,.0f} | {ratio} |" for name, rate, ratio in rows]
    for key, what in (("loader_workers", "loader as a GPU run uses it"),
                      ("loader_resizing_workers", "loader resizing")):
        if key in r:
            w = r[key]
            per_cpu = (f"; {w['samples_per_worker_cpu_s']:,.0f} per worker CPU-second"
                       if "samples_per_worker_cpu_s" in w else "")
            lines.append(f"| {what}, DataLoader, {w['workers']} worker process(es) (wall clock{per_cpu}) "
                         f"| {w['samples_per_s']:,.0f} | |")
    cores = ", ".join(f"{int(rate):,} samples/s: {n} cores" for rate, n in r["cores_per_gpu"].items())
    device_op = (f" The device's batched crop + resize + normalise (`to_model_input` with boxes), run on this CPU "
                 f"instead (one thread): {r['device_op_cpu_ms_per_sample']:.1f} ms per sample, so CPU training "
                 "resizes in the loader (`data.resize` auto)." if "device_op_cpu_ms_per_sample" in r else "")
    below = (f" Below the {TARGET_LOADER_RATIO}x target: train/data.py's docstring says where the time goes."
             if r["loader_vs_pil_decode"] < TARGET_LOADER_RATIO else "")
    return "\n".join(["| what | samples/s per core | vs PIL decode |", "|---|---:|---|", *lines, "",
                      f"Median of {r['rounds']} interleaved rounds over {r['samples']:,} samples (per-round ratios "
                      f"{', '.join(f'{x:.2f}' for x in r['ratio_per_round'])}). Cores per GPU for the loader at this "
                      f"rate: {cores}.{below}{device_op}"])


def markdown(results: dict) -> str:
    parts = ["## Training (`python -m bench.bench_train`)", "",
             f"Machine: {machine_line(results['machine'])}. Shards: generated 256 px smooth-noise JPEGs (~17 KB, "
             "like photos of that size) with random captions (`demo/synthetic.py`) unless stated. Per core = per "
             "CPU-second used by the process."]
    if "loader" in results:
        lo = results["loader"]
        parts += ["", f"### Loader: {lo['image_size']} px from 256 px JPEGs, per core", "", loader_rows(lo)]
    if "cpu_train" in results:
        t = results["cpu_train"]
        parts += ["", f"### CPU: training `{t['config']}`, {t['steps']} steps (64 px shards)", "",
                  f"{t['samples_per_s']:,.0f} samples/s, data wait {100 * t['data_share']:.1f}% of step time, "
                  f"loss {t['first_loss']:.2f} -> {t['last_loss']:.2f} (random captions on noise: nothing to learn, "
                  "throughput only). The machine is shared: training rates vary 2x between runs here."]
    if "gpu_train" in results:
        t, lo = results["gpu_train"], results["gpu_loader"]
        host = f" Host: {machine_line(t['host'])}." if "host" in t else ""
        parts += ["", f"### GPU: `{t['config']}` on {t.get('gpu', 'CUDA')}, bf16, {t['steps']} steps", "",
                  f"{'Compiled' if t.get('compiled') else 'Eager'} (the faster of the runs), {t.get('workers', '?')} "
                  f"loader workers.{host}", "",
                  "| what | measured | target |", "|---|---|---|",
                  f"| samples/s per GPU | {t['samples_per_s']:,.0f} | >= {TARGET_SAMPLES_PER_GPU:,} "
                  f"(open_clip: ~{REFERENCE_A100} per A100) |",
                  f"| data wait share of step time | {100 * t['data_share']:.1f}% | < {100 * TARGET_DATA_SHARE:.0f}% |",
                  f"| loader per core at {lo['image_size']} px | {lo['loader']:,.0f} samples/s | "
                  f"{t['samples_per_s'] / lo['loader']:.1f} cores per GPU needed |",
                  f"| peak GPU memory | {t.get('peak_memory_gb', '?')} GB | |",
                  "", loader_rows(lo)]
    else:
        parts += ["", "GPU: not measured yet (no accelerator was lent to a session so far): run `bench/gpu_check.sh` "
                  "where a GPU is available (ViT-B/32 bf16, 300 steps, plus a checkpoint/resume check)."]
    return "\n".join(parts)


if __name__ == "__main__":
    main()
