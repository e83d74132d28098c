"""Benchmark of the trainer: loader samples/s per core next to raw tar reading, and training samples/s.

Measured in one run, on the same shards (given with --shards, or generated: smooth-noise JPEGs with random
captions, `demo/synthetic.py`, so no file from outside the repository is needed):
  - raw tar:   read every member's bytes with `tarfile` (the reference: I/O + tar parsing, one core);
  - + decode:  the same plus a full PIL decode to RGB (the reference the design names);
  - loader:    train/data.py's pipeline in-process (tar -> shuffle -> decode + random resized crop ->
               batch + tokenize), one core; rates are samples per CPU-second, so per core;
  - loader xN: the DataLoader with N workers, wall-clock samples/s;
  - training:  `train.train.main` for a few steps; samples/s and the share of step time spent waiting for
               data, from its metrics.jsonl (intervals after the first third: compile and start-up excluded).
CPU mode (default) trains the tiny config; `--device cuda --config train/configs/vit_b32.json --steps 300`
trains ViT-B/32 in bf16 on the GPU (resampled mode over generated 256 px shards) and also measures the
loader at 224 px, which says how many CPU cores per GPU the input pipeline needs.
Results merge into bench/results/train.json (a GPU run keeps the CPU figures, and the other way round);
the `train` section of BENCHMARKS.md is rewritten from it.

Run: make bench   or   python -m bench.bench_train [--shards 'dir/{00000..00009}.tar'] [--device cuda ...]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from bench.report import RESULTS, machine, machine_line, save_results, update_section
from train import config as config_lib
from train import train as trainer
from train.data import expand_shards, make_loader, make_pipeline
from demo.synthetic import write_shards

ROOT = Path(__file__).resolve().parent.parent
TARGET_SAMPLES_PER_GPU = 1_500   # DESIGN.md: ViT-B/32 bf16 per H100
TARGET_DATA_SHARE = 0.05         # DESIGN.md: data time < 5% of the step
REFERENCE_A100 = 786             # open_clip ViT-B/32 on LAION-400M, samples/s per A100 (DESIGN.md)

log = logging.getLogger("bench_train")


def cpu_seconds() -> float:
    """User + system CPU time of this process (the loader runs in-process for the per-core figures)."""
    t = os.times()
    return t.user + t.system


def time_raw(urls: list[str], decode: bool) -> dict:
    samples, wall0, cpu0 = 0, time.perf_counter(), cpu_seconds()
    for url in urls:
        with tarfile.open(url, "r|") as tar:
            for member in tar:
                data = tar.extractfile(member).read()
                if member.name.endswith(".jpg"):
                    samples += 1
                    if decode:
                        Image.open(io.BytesIO(data)).convert("RGB")
    return rates(samples, time.perf_counter() - wall0, cpu_seconds() - cpu0)


def time_loader(urls: list[str], data_cfg, image_size: int, context: int) -> dict:
    pipeline = make_pipeline(urls, data_cfg, image_size, context, seed=0, epoch=0)   # tokenizer build: ~0.4 s, once
    samples, wall0, cpu0 = 0, time.perf_counter(), cpu_seconds()
    for batch in pipeline:
        samples += len(batch["keys"])
    return rates(samples, time.perf_counter() - wall0, cpu_seconds() - cpu0)


def time_dataloader(urls: list[str], data_cfg, image_size: int, context: int) -> dict:
    samples, wall0 = 0, time.perf_counter()
    for batch in make_loader(urls, data_cfg, image_size, context, seed=0, epoch=0):
        samples += len(batch["keys"])
    wall = time.perf_counter() - wall0
    return {"samples": samples, "wall_s": round(wall, 2), "samples_per_s": round(samples / wall, 1),
            "workers": data_cfg.workers}


def rates(samples: int, wall: float, cpu: float) -> dict:
    return {"samples": samples, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "samples_per_cpu_s": round(samples / max(cpu, 1e-9), 1)}


def time_training(shards: str, config: str, device: str, steps: int, extra: list[str]) -> dict:
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


def loader_suite(urls: list[str], image_size: int, context: int, workers: int) -> dict:
    data_cfg = config_lib.DataCfg(batch_size=256, workers=0, shuffle_buffer=1_000, shuffle_initial=100)
    result = {"image_size": image_size, "raw_tar": time_raw(urls, decode=False),
              "raw_tar_pil_decode": time_raw(urls, decode=True),
              "loader_one_core": time_loader(urls, data_cfg, image_size, context)}
    result["loader_workers"] = time_dataloader(urls, config_lib.DataCfg(**{**data_cfg.__dict__, "workers": workers}),
                                               image_size, context)
    return result


def generated_shards(out: Path, shards: int, per_shard: int, image_size: int) -> tuple[str, list[str]]:
    paths = write_shards(out, "noise", shards=shards, per_shard=per_shard, image_size=image_size, seed=0,
                         processes=os.cpu_count() or 1)
    bytes_per_sample = sum(Path(p).stat().st_size for p in paths) / (shards * per_shard)
    log.info("generated %d shards x %d samples of %d px (%.1f KB per sample)", shards, per_shard, image_size,
             bytes_per_sample / 1e3)
    return f"{out}/{{00000..{shards - 1:05d}}}.tar", paths


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", help="brace pattern of local shards (default: generated)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--config", default=str(ROOT / "train" / "configs" / "tiny.json"))
    parser.add_argument("--steps", type=int, default=0, help="training steps (default: 60 on CPU, 300 on CUDA)")
    parser.add_argument("--batch-size", type=int, default=0, help="per GPU/process (default: the config's)")
    parser.add_argument("--workers", type=int, default=0, help="loader workers (default: cores - 1, at most 12)")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible")
    cfg = config_lib.load(args.config)
    workers = args.workers or max(1, min(12, (os.cpu_count() or 2) - 1))
    steps = args.steps or (300 if cuda else 60)
    batch = args.batch_size or cfg.data.batch_size
    results = json.loads((RESULTS / "train.json").read_text()) if (RESULTS / "train.json").exists() else {}
    results["machine"] = machine()

    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        if args.shards:
            shards, urls = args.shards, expand_shards(args.shards)
        elif cuda:   # 256 px like img2dataset's default output, resampled for as many steps as asked
            shards, urls = generated_shards(Path(tmp), shards=40, per_shard=256, image_size=256)
        else:
            shards, urls = generated_shards(Path(tmp), shards=8, per_shard=250, image_size=64)
        size, context = cfg.model.vision.image_size, cfg.model.text.context_length
        loader = loader_suite(urls, size, context, workers)
        extra = ["--batch-size", str(batch), "--workers", str(workers)]
        if cuda:
            extra += ["--resampled", "--epoch-samples", str(steps * batch)] + (["--compile"] if args.compile else [])
            results["gpu_loader"] = loader
            results["gpu_train"] = time_training(shards, args.config, "cuda", steps, extra)
        else:
            results["cpu_loader"] = loader
            results["cpu_train"] = time_training(shards, args.config, "cpu", steps, extra)
    save_results("train", results)
    update_section("train", markdown(results))
    return results


def loader_rows(r: dict) -> str:
    raw = r["raw_tar"]["samples_per_cpu_s"]
    rows = [("raw `tarfile` read (reference)", r["raw_tar"]["samples_per_cpu_s"]),
            ("raw read + PIL decode (reference)", r["raw_tar_pil_decode"]["samples_per_cpu_s"]),
            (f"loader: decode + crop to {r['image_size']} px + tokenize + batch", r["loader_one_core"]["samples_per_cpu_s"])]
    lines = [f"| {name} | {rate:,.0f} | {rate / raw:.2f} |" for name, rate in rows]
    w = r["loader_workers"]
    lines.append(f"| loader, DataLoader, {w['workers']} worker process(es) (wall clock) | {w['samples_per_s']:,.0f} | |")
    return "\n".join(["| what | samples/s per core | vs raw tar |", "|---|---|---|", *lines])


def markdown(results: dict) -> str:
    parts = ["## Training (`python -m bench.bench_train`)", "",
             f"Machine: {machine_line(results['machine'])}. Shards: generated smooth-noise JPEGs with random captions "
             "(`demo/synthetic.py`) unless stated. Per core = per CPU-second used by the process."]
    if "cpu_loader" in results:
        t = results["cpu_train"]
        parts += ["", f"### CPU: loader ({results['cpu_loader']['image_size']} px output)", "",
                  loader_rows(results["cpu_loader"]),
                  "", f"### CPU: training `{t['config']}`, {t['steps']} steps", "",
                  f"{t['samples_per_s']:,.0f} samples/s, data wait {100 * t['data_share']:.1f}% of step time, "
                  f"loss {t['first_loss']:.2f} -> {t['last_loss']:.2f} (random captions on noise: nothing to learn, "
                  "throughput only). The machine is shared: training rates vary 2x between runs here."]
    if "gpu_train" in results:
        t, lo = results["gpu_train"], results["gpu_loader"]
        per_core = lo["loader_one_core"]["samples_per_cpu_s"]
        parts += ["", f"### GPU: `{t['config']}` on {t.get('gpu', 'CUDA')}, bf16, {t['steps']} steps", "",
                  "| what | measured | target |", "|---|---|---|",
                  f"| samples/s per GPU | {t['samples_per_s']:,.0f} | >= {TARGET_SAMPLES_PER_GPU:,} "
                  f"(open_clip: ~{REFERENCE_A100} per A100) |",
                  f"| data wait share of step time | {100 * t['data_share']:.1f}% | < {100 * TARGET_DATA_SHARE:.0f}% |",
                  f"| loader per core at {lo['image_size']} px | {per_core:,.0f} samples/s | "
                  f"{t['samples_per_s'] / per_core:.1f} cores per GPU needed |",
                  f"| peak GPU memory | {t.get('peak_memory_gb', '?')} GB | |",
                  "", loader_rows(lo)]
    else:
        parts += ["", "GPU: not measured on this machine; run `python -m bench.bench_train --device cuda "
                  "--config train/configs/vit_b32.json --steps 300` where a GPU is available."]
    return "\n".join(parts)


if __name__ == "__main__":
    main()
