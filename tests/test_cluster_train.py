"""The trainer under `torchrun --nproc_per_node=2` (gloo on loopback): each rank reads its own shards in
every epoch, one process writes checkpoints and metrics, and killing both ranks then `--resume` ends at
the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_train_loss import free_port
from demo.synthetic import write_shards
from tests.native import wall_clock

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "train" / "configs" / "tiny.json")
TRAIN = ["--config", CONFIG, "--workers", "0", "--set", "run.threads=1", "--set", "data.shuffle_buffer=32",
         "--set", "data.shuffle_initial=8", "--batch-size", "8", "--device", "cpu", "--steps", "12",
         "--log-every", "1", "--set", "run.ckpt_every=2"]


def torchrun(*args: str) -> list[str]:
    """The command a user runs (README, "Running on a cluster"), on 127.0.0.1 and an ephemeral port."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
            "--master_addr=127.0.0.1", f"--master_port={free_port()}", *args]


def start(cmd: list[str]) -> subprocess.Popen:
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    # its own process group: the agent and both ranks are stopped together
    return subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> None:
    try:
        _, err = proc.communicate(timeout=wall_clock(timeout))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"torchrun did not finish in {timeout:.0f}s")
    assert proc.returncode == 0, err[-3000:]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    write_shards(out, "shapes", shards=4, per_shard=24, image_size=32, seed=1)
    return f"{out}/{{00000..00003}}.tar"


def test_each_rank_reads_its_own_shards_in_every_epoch(shards, tmp_path):
    finish(start(torchrun("-m", "tests.torchrun_probe", shards, CONFIG, str(tmp_path))))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for epoch in ("0", "1"):
        keys = [set(r[epoch]) for r in ranks]
        assert len(keys[0]) == len(ranks[0][epoch]) == 48 and len(keys[1]) == 48   # 2 shards of 24 each
        assert not keys[0] & keys[1] and len(keys[0] | keys[1]) == 96                # disjoint, all samples
    assert ranks[0]["0"] != ranks[0]["1"]   # the shard order is drawn again each epoch


def test_killed_ranks_resume_to_the_weights_of_an_uninterrupted_run(shards, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    finish(start(torchrun("-m", "train.train", "--shards", shards, "--out", str(straight), *TRAIN)))
    steps = [json.loads(line)["step"] for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))     # one writer: one line per step, none doubled
    assert sorted(p.name for p in straight.iterdir()) == ["ckpt_latest.pt", "config.json", "metrics.jsonl"]

    proc = start(torchrun("-m", "train.train", "--shards", shards, "--out", str(resumed), *TRAIN))
    deadline = time.monotonic() + wall_clock(300)
    metrics = resumed / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):   # a checkpoint at step 4
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)     # the agent and both ranks, at once
    proc.wait()
    killed_at = torch.load(resumed / "ckpt_latest.pt", weights_only=True)["step"]
    assert 4 <= killed_at < 12

    finish(start(torchrun("-m", "train.train", "--shards", shards, "--out", str(resumed), "--resume", *TRAIN)))
    a = torch.load(straight / "ckpt_latest.pt", weights_only=True)
    b = torch.load(resumed / "ckpt_latest.pt", weights_only=True)
    assert a["step"] == b["step"] == 12 and a["world_size"] == b["world_size"] == 2
    assert (a["epoch"], a["batches_done"]) == (b["epoch"], b["batches_done"])
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))
