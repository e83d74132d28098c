"""Tests of bench/bench_train.py's pieces on tiny generated shards (the full benchmark runs in `make bench`)."""

from __future__ import annotations

import json

import pytest

from bench import bench_train
from pipeline.common.files import expand
from demo.synthetic import write_shards


@pytest.mark.slow
def test_loader_and_training_measurements_render_a_section(tmp_path):
    write_shards(tmp_path, "noise", shards=2, per_shard=40, image_size=48)
    shards = f"{tmp_path}/{{00000..00001}}.tar"
    loader = bench_train.loader_suite(expand(shards, ".tar"), image_size=32, context=32, workers=1, rounds=2)
    assert loader["samples"] == loader["loader_workers"]["samples"] == 80 and loader["rounds"] == 2
    assert len(loader["ratio_per_round"]) == 2 and loader["loader_vs_pil_decode"] > 0
    assert loader["cores_per_gpu"]["1500"] == pytest.approx(1500 / loader["loader"], abs=0.05)
    assert min(loader["raw_tar"], loader["pil_decode"], loader["loader"], loader["previous_loader"]) > 0
    assert loader["loader_resizing"] > 0 and loader["loader_resizing_vs_pil_decode"] > 0   # CPU training's path
    assert loader["device_op_cpu_ms_per_sample"] > 0   # the GPU run's batched resize, timed on the CPU
    assert loader["loader_resizing_workers"]["samples"] == 80
    assert loader["loader_workers"]["samples_per_worker_cpu_s"] > 0
    training = bench_train.time_training(shards, bench_train.ROOT / "train/configs/tiny.json", "cpu", 3,
                                         ["--batch-size", "16", "--workers", "0", "--set", "run.threads=1"])
    assert training["steps"] == 3 and training["samples_per_s"] > 0 and training["config"] == "train/configs/tiny.json"
    md = bench_train.markdown({"machine": {"cpu": "x", "cores": 2, "memory_gb": 1, "python": "3", "date_utc": "now"},
                               "loader": loader, "cpu_train": training})
    assert "| raw `tarfile` read (reference) |" in md and "GPU: not measured" in md
    assert "### Loader: 32 px from 256 px JPEGs, per core" in md and "1,500 samples/s:" in md
    assert "| loader as CPU training uses it: crop resized to 32 px in the loader" in md
    assert "ms per sample, so CPU training resizes in the loader" in md


def test_loader_only_prints_one_json_line_and_writes_nothing(tmp_path, capsys):
    write_shards(tmp_path, "noise", shards=1, per_shard=20, image_size=40)
    before = sorted(p.name for p in bench_train.RESULTS.glob("*")) if bench_train.RESULTS.exists() else []
    result = bench_train.main(["--loader-only", "--image-size", "32", "--rounds", "1",
                               "--shards", f"{tmp_path}/{{00000..00000}}.tar"])
    line = json.loads(capsys.readouterr().out.strip())
    assert line["loader_vs_pil_decode"] == result["loader_vs_pil_decode"] and line["image_size"] == 32
    assert {"raw_tar", "pil_decode", "loader", "cores_per_gpu"} <= set(line)
    after = sorted(p.name for p in bench_train.RESULTS.glob("*")) if bench_train.RESULTS.exists() else []
    assert before == after


def test_gpu_check_script_runs_its_smoke_mode_on_cpu(tmp_path):
    """bench/gpu_check.sh --device cpu --smoke: the GPU check's every step on the tiny config (a few steps)."""
    import subprocess
    import sys
    from bench import gpu_check
    script = bench_train.ROOT / "bench" / "gpu_check.sh"
    proc = subprocess.run([str(script), "--device", "cpu", "--smoke", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=600, env={**__import__("os").environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["passed"] and all(result["correctness"]["checks"].values())
    assert (result["correctness"]["stopped_at"], result["correctness"]["resumed_to"]) == (6, 12)
    assert result["correctness"]["logged_steps"] == [2, 4, 6, 8, 10, 12]
    assert result["throughput"]["eager"]["steps"] == 6 and result["throughput"]["eager"]["samples_per_s"] > 0
    assert 0 < result["loader"]["loader"] and result["loader"]["image_size"] == 32
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["passed"] is True and summary["samples_per_s"] == result["throughput"]["eager"]["samples_per_s"]
    with pytest.raises(ValueError, match="only a full CUDA"):
        gpu_check.record(result, {})


def test_a_recorded_gpu_check_feeds_the_train_section_and_the_projection(tmp_path, monkeypatch):
    from bench import gpu_check, projection, report
    run = {"steps": 300, "config": "train/configs/vit_b32.json", "samples_per_s": 2000.0, "data_share": 0.02,
           "first_loss": 5.5, "last_loss": 5.4, "extra_args": [], "gpu": "NVIDIA H200", "peak_memory_gb": 20.0}
    loader = {"image_size": 224, "samples": 1024, "rounds": 2, "raw_tar": 5000.0, "pil_decode": 1000.0,
              "loader": 800.0, "previous_loader": 300.0, "loader_vs_pil_decode": 0.8, "ratio_per_round": [0.8, 0.8],
              "cores_per_gpu": {"1500": 1.9, "2500": 3.1}}
    host = {"cpu": "Xeon", "cores": 16, "memory_gb": 128, "python": "3.12", "date_utc": "then"}
    check = {"device": "cuda", "smoke": False, "gpu": "NVIDIA H200", "torch": "2.11", "workers": 14, "loader": loader,
             "machine": host,
             "throughput": {"eager": {**run, "compiled": False}, "compiled": {**run, "samples_per_s": 2400.0,
                                                                            "compiled": True}},
             "correctness": {"checks": {"loss_decreased": True}}}
    results = gpu_check.record(check, {"machine": {"cpu": "x", "cores": 2, "memory_gb": 1, "python": "3",
                                                   "date_utc": "now"}})
    assert results["gpu_train"]["samples_per_s"] == 2400.0 and results["gpu_train"]["compiled"] is True
    md = bench_train.markdown(results)
    assert "NVIDIA H200" in md and "| samples/s per GPU | 2,400 |" in md and "3.0 cores per GPU needed" in md
    assert projection.gpu_rate(results) == (2400.0, "measured on NVIDIA H200 (bench/gpu_check.sh)")
    assert projection.gpu_rate({})[0] == projection.OPEN_CLIP_A100
    # the command line: `python -m bench.gpu_check --record FILE` writes train.json, BENCHMARKS.md, the projection
    for module in (report, gpu_check, projection):
        monkeypatch.setattr(module, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(report, "BENCHMARKS", tmp_path / "BENCHMARKS.md")
    (tmp_path / "gpu_check.json").write_text(json.dumps(check))
    assert gpu_check.main(["--record", str(tmp_path / "gpu_check.json")]) == 0
    assert json.loads((tmp_path / "results" / "train.json").read_text())["gpu_train"]["samples_per_s"] == 2400.0
    written = (tmp_path / "BENCHMARKS.md").read_text()
    assert "| samples/s per GPU | 2,400 |" in written and "2,400 samples/s per GPU, measured on NVIDIA H200" in written
    assert "Compiled (the faster of the runs), 14 loader workers. Host: Xeon, 16 cores" in written
