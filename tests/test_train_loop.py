"""End-to-end tests of train/train.py and train/zeroshot.py on shards written in the test (CPU, tiny model)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from train import train, zeroshot
from demo.synthetic import draw_shape, shape_classes, write_shards
from tests.native import wall_clock

CONFIG = str(Path(__file__).resolve().parent.parent / "train" / "configs" / "tiny.json")
# 32 px, 1 thread (the test machine has 2 busy cores), no loader workers unless a test needs them
FAST = ["--config", CONFIG, "--workers", "0", "--set", "run.threads=1", "--set", "data.shuffle_buffer=64",
        "--set", "data.shuffle_initial=16"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    write_shards(out, "shapes", shards=4, per_shard=64, image_size=32, seed=1)
    return f"{out}/{{00000..00003}}.tar"


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_few_cpu_steps_lower_the_loss(shards, tmp_path):
    run = tmp_path / "run"
    train.main(["--shards", shards, "--out", str(run), "--steps", "30", "--batch-size", "32", "--lr", "2e-3",
                "--warmup", "3", "--log-every", "5", *FAST])
    rows = metrics(run)
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"]          # starts near ln(32) = 3.47
    assert all(0 <= r["data_share"] <= 1 and r["samples_per_s"] > 0 for r in rows)
    ckpt = torch.load(run / "ckpt_latest.pt", weights_only=True)   # plain types and tensors only
    assert ckpt["step"] == 30 and set(ckpt) >= {"model", "optimizer", "scaler", "rng", "config", "epoch"}
    assert not list(run.glob("*.tmp"))


@pytest.mark.parametrize("resize", ["auto", "device"])   # auto: in the loader on a CPU; device: to_model_input's
def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(shards, tmp_path, resize):
    common = ["--shards", shards, "--steps", "8", "--batch-size", "48", "--warmup", "2", "--ckpt-every", "100", *FAST,
              "--set", f"data.resize={resize}"]
    train.main([*common, "--out", str(tmp_path / "straight")])
    train.main([*common, "--out", str(tmp_path / "resumed"), "--stop-at", "5"])   # "interrupted" after step 5
    assert torch.load(tmp_path / "resumed" / "ckpt_latest.pt", weights_only=True)["step"] == 5
    train.main([*common, "--out", str(tmp_path / "resumed"), "--resume"])
    straight = torch.load(tmp_path / "straight" / "ckpt_latest.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "ckpt_latest.pt", weights_only=True)
    assert resumed["step"] == 8
    assert (resumed["epoch"], resumed["batches_done"]) == (straight["epoch"], straight["batches_done"])
    for name, value in straight["model"].items():
        assert torch.allclose(value, resumed["model"][name], atol=1e-6), name


def test_resume_refuses_another_model_shape(shards, tmp_path):
    train.main(["--shards", shards, "--out", str(tmp_path), "--steps", "1", "--batch-size", "8", *FAST])
    with pytest.raises(ValueError, match="another model config"):
        train.main(["--shards", shards, "--out", str(tmp_path), "--steps", "2", "--batch-size", "8", "--resume",
                    *FAST, "--set", "model.embed_dim=32"])


def write_image_folder(root: Path, per_class: int) -> list[str]:
    rng = __import__("random").Random(5)
    for name in shape_classes():
        (root / name.replace(" ", "_")).mkdir(parents=True)
        for i in range(per_class):
            draw_shape(*name.split(), 32, rng).save(root / name.replace(" ", "_") / f"{i}.jpg")
    return shape_classes()


@pytest.mark.slow
def test_zero_shot_after_training_beats_chance(shards, tmp_path):
    run = tmp_path / "run"
    train.main(["--shards", shards, "--out", str(run), "--steps", "40", "--batch-size", "48", "--lr", "2e-3",
                "--warmup", "5", *FAST])
    classes = write_image_folder(tmp_path / "eval", per_class=8)
    results = zeroshot.main(["--checkpoint", str(run / "ckpt_latest.pt"), "--eval-set", str(tmp_path / "eval"),
                             "--templates", "photo", "--pairs", shards, "--max-pairs", "64", "--device", "cpu"])
    written = json.loads((run / "zeroshot_eval.json").read_text())
    assert written["classification"]["photo"] == results["classification"]["photo"]
    assert written["classnames"] == sorted(classes)
    rows = [json.loads(line) for line in (run / "predictions_eval.jsonl").read_text().splitlines()]
    assert len(rows) == 8 * len(classes) and set(rows[0]) == {"eval_set", "image_id", "label", "pred", "correct"}
    assert rows[0]["eval_set"] == "eval" and rows[0]["image_id"] == "blue_circle/0.jpg"
    assert sum(r["correct"] for r in rows) / len(rows) == pytest.approx(results["classification"]["photo"]["top1"])
    assert results["classification"]["photo"]["top1"] > 2 * results["chance"]
    assert results["retrieval"]["n"] == 64 and results["retrieval"]["image_to_text_R@10"] > 10 / 64


def test_zero_shot_metrics_on_hand_made_scores():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.2, 0.7]])
    labels = torch.tensor([0, 1, 1, 2])
    m = zeroshot.classification_metrics(logits, labels)
    assert m["top1"] == 0.75 and m["top5"] == 1.0
    assert m["mean_per_class_recall"] == pytest.approx((1 + 0.5 + 1) / 3)
    r = zeroshot.retrieval_metrics(torch.eye(3), torch.eye(3)[[0, 2, 1]])
    assert r["image_to_text_R@1"] == pytest.approx(1 / 3) and r["text_to_image_R@5"] == 1.0


def test_digits_csv_reads_as_labelled_images(tmp_path):
    rows = np.zeros((3, 785), dtype=int)
    rows[:, -1] = [7, 0, 9]
    rows[0, :784] = 255
    path = tmp_path / "digits.csv"
    np.savetxt(path, rows, fmt="%d", delimiter=",")
    eval_set, ids, labels, images = zeroshot.read_eval_set(str(path), None)
    assert labels.tolist() == [7, 0, 9] and ids[0] == "row0"
    assert eval_set.name == "digits" and eval_set.classnames == tuple(str(i) for i in range(10))   # MNIST default
    assert np.asarray(Image.open(io.BytesIO(images[0]))).min() == 255
    named, *_ = zeroshot.read_eval_set(f"mnist={path}", "zero,one,two,three,four,five,six,seven,eight,nine")
    assert named.name == "mnist" and named.classnames[7] == "seven"


def ddp_worker(rank: int, world: int, port: int, args: list[str]) -> None:
    import os
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    train.main(args)


@pytest.mark.slow
def test_two_rank_gloo_run_with_uneven_shards_finishes(tmp_path):
    import time as _time

    import torch.multiprocessing as mp

    from tests.test_train_loss import free_port

    # 3 shards over 2 ranks: each epoch one rank holds twice the samples of the other
    write_shards(tmp_path / "s", "shapes", shards=3, per_shard=24, image_size=32)
    args = ["--shards", f"{tmp_path}/s/{{00000..00002}}.tar", "--out", str(tmp_path / "run"), "--steps", "6",
            "--batch-size", "8", "--log-every", "2", "--device", "cpu", *FAST]
    ctx = mp.spawn(ddp_worker, args=(2, free_port(), args), nprocs=2, join=False)
    deadline = _time.monotonic() + wall_clock(120)
    while not ctx.join(timeout=5):
        if _time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("a rank hung: the epoch did not end on all ranks together")
    rows = metrics(tmp_path / "run")
    assert rows[-1]["step"] == 6
    assert rows[-1]["epoch"] >= 1   # rank with 24 samples = 3 batches: epochs end together after 3 steps


def test_mnist_demo_data_holds_out_every_fifth_row(tmp_path):
    from demo.mnist import write_mnist

    rows = np.zeros((20, 785), dtype=int)
    rows[:, -1] = np.repeat(np.arange(10), 2)
    np.savetxt(tmp_path / "d.csv", rows, fmt="%d", delimiter=",")
    paths, n_eval = write_mnist(tmp_path / "d.csv", tmp_path / "out", per_shard=8)
    assert n_eval == 4 and len(paths) == 2   # rows 0, 5, 10, 15 held out; 16 train rows in shards of 8
    import tarfile
    trained = {json.loads(tarfile.open(p).extractfile(m).read())["row"]
               for p in paths for m in tarfile.open(p) if m.name.endswith(".json")}
    assert trained == set(range(20)) - {0, 5, 10, 15}
    assert sorted(p.name for p in (tmp_path / "out" / "eval").iterdir()) == ["0", "2", "5", "7"]


def test_training_skips_and_counts_a_missing_shard(tmp_path):
    write_shards(tmp_path, "shapes", shards=1, per_shard=8, image_size=32)
    run = tmp_path / "run"
    # one batch per epoch: 3 steps are 3 epochs, each meeting the missing shard once (before or after the batch)
    train.main(["--shards", f"{tmp_path}/00000.tar::{tmp_path}/gone.tar", "--out", str(run), "--steps", "3",
                "--batch-size", "8", "--log-every", "3", *FAST])
    assert metrics(run)[-1]["skipped"]["FileNotFoundError"] >= 2


def test_template_sets_by_name_file_or_inline(tmp_path):
    assert zeroshot.template_set("photo") == ("photo", ["a photo of a {}."])
    (tmp_path / "mine.txt").write_text("a {}.\nthe {}, up close\n")
    assert zeroshot.template_set(str(tmp_path / "mine.txt")) == ("mine", ["a {}.", "the {}, up close"])
    assert zeroshot.template_set("the digit {}, handwritten") == ("the digit {}, handwritten", ["the digit {}, handwritten"])
    with pytest.raises(ValueError, match="not a set name"):
        zeroshot.template_set("nonsense")
