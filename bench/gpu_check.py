"""The prepared GPU check (issue 19): ViT-B/32 bf16 throughput, and a checkpoint/resume correctness run.

One call on one GPU, under 10 minutes (an H200: ~5), writing its figures to OUT/gpu_check.json:
  1. shards: 40 x 256 generated 256 px JPEGs (img2dataset's default size) for throughput, 16 x 128 shape
     pictures for the correctness run (learnable: the loss must fall);
  2. the loader per core on this machine's CPU at 224 px (bench_train's interleaved measurement), so the
     cores-per-GPU figure uses the CPU that feeds this GPU;
  3. throughput: ViT-B/32, bf16 autocast, fused AdamW, SDPA attention, 300 steps of 256 in resampled mode
     with 12+ loader workers: samples/s, data-wait share of step time, peak GPU memory; eager, then
     `--compile` (torch.compile), so the default can follow the measurement;
  4. correctness: 50 steps stopped at 25 (checkpoint) and resumed: the checkpoint holds step 25, the resumed
     run ends at 50 with one metrics line per interval (none twice), and the loss falls.
Exit status 0 when the correctness checks pass; the throughput targets are reported, not enforced.
`--device cpu --smoke` runs the same steps on the tiny config for a few steps, the crops resized on the device as
on a GPU (the test suite runs it).
`--record FILE` merges a gpu_check.json into bench/results/train.json and rewrites BENCHMARKS.md's train and
projection sections (run it where the repository is, after the GPU run).

Run: bench/gpu_check.sh [--out DIR]    or    bench/gpu_check.sh --device cpu --smoke --out /tmp/x
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import bench_train
from bench.report import RESULTS, machine, save_results, update_section
from pipeline.common.logs import setup_logging
from train import train as trainer

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("bench.gpu_check")

# what each mode runs; the full plan is sized to finish in < 10 minutes on one H100/H200 (~5 expected)
PLANS = {
    "full": {"config": "train/configs/vit_b32.json", "shards": 40, "per_shard": 256, "image_size": 256,
             "steps": 300, "batch": 256, "loader_size": 224, "loader_rounds": 2, "compile": True,
             "check": {"shards": 16, "per_shard": 128, "image_size": 64, "steps": 50, "log_every": 5, "batch": 128,
                       "lr": 2e-4, "warmup": 10, "workers": 8}},
    "smoke": {"config": "train/configs/tiny.json", "shards": 2, "per_shard": 48, "image_size": 64,
              "steps": 6, "batch": 16, "loader_size": 32, "loader_rounds": 1, "compile": False,
              "check": {"shards": 2, "per_shard": 64, "image_size": 32, "steps": 12, "log_every": 2, "batch": 32,
                        "lr": 2e-3, "warmup": 2, "workers": 0}},
}

# on a CPU: one thread, and the crops resized on the device as a GPU run does (CPU training's default
# resizes them in the loader), so the smoke test covers the GPU run's input path
CPU_SMOKE = ["--set", "run.threads=1", "--set", "data.resize=device"]


def throughput(shards: str, plan: dict, device: str, workers: int, compiled: bool) -> dict:
    steps, batch = plan["steps"], plan["batch"]
    extra = ["--batch-size", str(batch), "--workers", str(workers), "--resampled", "--epoch-samples",
             str(steps * batch), *(["--compile"] if compiled else [])]
    if device == "cpu":
        extra += CPU_SMOKE
    t0 = time.perf_counter()
    result = bench_train.time_training(shards, ROOT / plan["config"], device, steps, extra)
    return {**result, "compiled": compiled, "wall_s": round(time.perf_counter() - t0, 1)}


def correctness(shards: str, plan: dict, device: str, out: Path) -> dict:
    """Train N steps in two runs (stop at N/2, resume) and check the checkpoint, the metrics and the loss."""
    check = plan["check"]
    steps, log_every = check["steps"], check["log_every"]
    common = ["--shards", shards, "--config", str(ROOT / plan["config"]), "--out", str(out), "--device", device,
              "--steps", str(steps), "--batch-size", str(check["batch"]), "--lr", str(check["lr"]),
              "--warmup", str(check["warmup"]), "--log-every", str(log_every), "--ckpt-every", str(10 * steps),
              "--workers", str(check["workers"])]
    if device == "cpu":
        common += CPU_SMOKE
    t0 = time.perf_counter()
    trainer.main([*common, "--stop-at", str(steps // 2)])
    first = trainer.load_checkpoint(out / trainer.CKPT)
    trainer.main([*common, "--resume"])
    last = trainer.load_checkpoint(out / trainer.CKPT)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in rows]
    expected = sorted({*range(log_every, steps + 1, log_every), steps // 2, steps})
    checks = {"checkpoint_at_half": first["step"] == steps // 2,
              "resumed_to_the_end": last["step"] == steps,
              "each_interval_logged_once": logged == expected,
              # the mean of the last two intervals below the first two: one noisy interval cannot decide
              "loss_decreased": rows[-1]["loss"] + rows[-2]["loss"] < rows[0]["loss"] + rows[1]["loss"]}
    return {"steps": steps, "stopped_at": first["step"], "resumed_to": last["step"], "logged_steps": logged,
            "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"], "checks": checks,
            "wall_s": round(time.perf_counter() - t0, 1)}


def run(device: str, smoke: bool, out: Path, workers: int = 0) -> dict:
    plan = PLANS["smoke" if smoke else "full"]
    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("gpu_check: --device cuda, but torch sees no CUDA device")
    workers = workers or (max(1, min(14, (os.cpu_count() or 2) - 2)) if cuda else 1)   # 12+ on a 16-core host
    result = {"machine": machine(), "device": device, "smoke": smoke, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name() if cuda else None, "workers": workers, "plan": plan}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        tmp = Path(tmp)
        shards, urls = bench_train.generated_shards(tmp / "noise", plan["shards"], plan["per_shard"],
                                                    plan["image_size"])
        check = plan["check"]
        check_shards, _ = bench_train.generated_shards(tmp / "shapes", check["shards"], check["per_shard"],
                                                       check["image_size"], kind="shapes")
        context = 77   # CLIP's, as the ViT-B/32 config
        # 4 shards (1,024 samples at full size) are enough for a per-core rate and keep this part under a minute
        result["loader"] = bench_train.loader_per_core(urls[:4], plan["loader_size"], context, plan["loader_rounds"])
        log.info("loader: %s", json.dumps({k: result["loader"][k]
                                           for k in ("pil_decode", "loader", "loader_vs_pil_decode")}))
        result["throughput"] = {"eager": throughput(shards, plan, device, workers, compiled=False)}
        log.info("eager: %s", json.dumps(result["throughput"]["eager"]))
        if plan["compile"]:
            try:
                result["throughput"]["compiled"] = throughput(shards, plan, device, workers, compiled=True)
            except Exception as exn:   # noqa: BLE001 -- a compiler failure must not cost the rest of the GPU run
                result["throughput"]["compiled"] = {"error": f"{type(exn).__name__}: {exn}"[:2000]}
            log.info("compiled: %s", json.dumps(result["throughput"]["compiled"]))
        result["correctness"] = correctness(check_shards, plan, device, tmp / "run")
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    best = max((t for t in result["throughput"].values() if "samples_per_s" in t), key=lambda t: t["samples_per_s"])
    result["summary"] = {
        "samples_per_s": best["samples_per_s"], "compiled": best["compiled"], "data_share": best["data_share"],
        "peak_memory_gb": best.get("peak_memory_gb"),
        "meets_1500_samples_per_s": best["samples_per_s"] >= bench_train.TARGET_SAMPLES_PER_GPU,
        "data_wait_under_5_percent": best["data_share"] < bench_train.TARGET_DATA_SHARE,
        "cores_per_gpu_at_measured_rate": round(best["samples_per_s"] / result["loader"]["loader"], 1)}
    result["passed"] = all(result["correctness"]["checks"].values())
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def record(check: dict, results: dict) -> dict:
    """train.json's figures with a GPU check's merged in: the faster throughput run and that machine's loader."""
    if check["device"] != "cuda" or check["smoke"]:
        raise ValueError("only a full CUDA gpu_check is recorded (this one is a CPU or smoke run)")
    runs = [t for t in check["throughput"].values() if "samples_per_s" in t]
    best = max(runs, key=lambda t: t["samples_per_s"])
    gpu_train = {**best, "gpu": check["gpu"], "torch": check["torch"], "workers": check["workers"],
                 "host": check["machine"],
                 "all_runs": {name: t for name, t in check["throughput"].items()},
                 "correctness": check["correctness"]}
    return {"machine": check["machine"], **results, "gpu_train": gpu_train, "gpu_loader": check["loader"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--smoke", action="store_true", help="tiny config, a few steps (CPU test of this script)")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(RESULTS), help="where gpu_check.json goes")
    parser.add_argument("--workers", type=int, default=0, help="loader workers (default: cores - 2, at most 14)")
    parser.add_argument("--record", metavar="GPU_CHECK_JSON",
                        help="merge this gpu_check.json into bench/results/train.json and BENCHMARKS.md, then exit")
    args = parser.parse_args(argv)
    setup_logging()
    if args.record:
        path = RESULTS / "train.json"
        earlier = json.loads(path.read_text()) if path.exists() else {}
        results = record(json.loads(Path(args.record).read_text()), earlier)
        save_results("train", results)
        update_section("train", bench_train.markdown(results))
        from bench import projection
        projection.main()
        return 0
    result = run(args.device, args.smoke, Path(args.out), args.workers)
    print(json.dumps({"passed": result["passed"], **result["summary"], "checks": result["correctness"]["checks"],
                      "wall_s": result["wall_s"]}))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
