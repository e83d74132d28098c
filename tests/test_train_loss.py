"""Tests of train/loss.py (CLIP loss on hand-made tensors, the 2-process gather) and the pure schedule pieces."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from train.config import OptimCfg
from train.loss import clip_loss, gather_features
from train.train import lr_at, no_decay


def unit(rows) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


# ---- the loss ------------------------------------------------------------------------------------------------

def test_aligned_pairs_score_lower_than_shuffled():
    images = unit([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    texts = unit([[0.9, 0.1, 0], [0.1, 0.9, 0], [0, 0.1, 0.9], [0.8, 0.9, 0]])
    scale = torch.tensor(10.0)
    aligned = clip_loss(images, texts, scale)
    shuffled = clip_loss(images, texts[[1, 2, 3, 0]], scale)
    assert aligned < 0.5 < shuffled


def test_loss_is_symmetric_in_images_and_texts():
    torch.manual_seed(0)
    images, texts = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(14.3)
    assert torch.allclose(clip_loss(images, texts, scale), clip_loss(texts, images, scale))


def test_loss_equals_the_direct_computation():
    images = unit([[1, 0], [0, 1], [1, 1]])
    texts = unit([[1, 0.2], [0.1, 1], [1, 0.9]])
    scale = 5.0
    sims = [[scale * float(images[i] @ texts[j]) for j in range(3)] for i in range(3)]

    def ce(row_logits, target):   # -log softmax(row)[target], written out
        return -(row_logits[target] - math.log(sum(math.exp(v) for v in row_logits)))

    per_image = sum(ce(sims[i], i) for i in range(3)) / 3
    per_text = sum(ce([sims[i][j] for i in range(3)], j) for j in range(3)) / 3
    expected = (per_image + per_text) / 2
    assert clip_loss(images, texts, torch.tensor(scale)).item() == pytest.approx(expected, rel=1e-5)


def test_perfect_alignment_at_high_scale_approaches_zero():
    eye = torch.eye(4)
    assert clip_loss(eye, eye, torch.tensor(100.0)).item() < 1e-6


# ---- the distributed gather: 2 processes, gloo, loopback ---------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def global_batch():
    torch.manual_seed(1)
    return F.normalize(torch.randn(8, 5), dim=-1), F.normalize(torch.randn(8, 5), dim=-1)


def gather_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        images, texts = global_batch()
        local = slice(rank * 4, rank * 4 + 4)
        local_images = images[local].clone().requires_grad_(True)
        local_texts = texts[local].clone().requires_grad_(True)
        all_images, all_texts = gather_features(local_images, local_texts)
        loss = clip_loss(all_images, all_texts, torch.tensor(10.0))
        loss.backward()
        torch.save({"all_images": all_images.detach(), "all_texts": all_texts.detach(), "loss": loss.detach(),
                    "image_grad": local_images.grad, "text_grad": local_texts.grad}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gather_on_two_gloo_processes_keeps_local_gradients(tmp_path):
    mp.spawn(gather_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    images, texts = global_batch()
    full_images, full_texts = images.clone().requires_grad_(True), texts.clone().requires_grad_(True)
    full_loss = clip_loss(full_images, full_texts, torch.tensor(10.0))
    full_loss.backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(got["all_images"], images) and torch.equal(got["all_texts"], texts)   # rank order
        assert got["loss"].item() == pytest.approx(full_loss.item(), rel=1e-6)
        # the local slot's gradient is the exact gradient of the global loss for those rows
        local = slice(rank * 4, rank * 4 + 4)
        assert torch.allclose(got["image_grad"], full_images.grad[local], atol=1e-6)
        assert torch.allclose(got["text_grad"], full_texts.grad[local], atol=1e-6)


def test_gather_without_a_process_group_is_the_identity():
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    assert gather_features(a, b) == (a, b)


# ---- schedule and weight-decay groups ------------------------------------------------------------------------

def test_lr_warms_up_linearly_then_decays_to_min():
    cfg = OptimCfg(lr=1e-3, warmup=10, steps=110, min_lr=1e-5)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx((1e-3 + 1e-5) / 2)
    assert lr_at(110, cfg) == pytest.approx(1e-5)


@given(st.integers(0, 5_000), st.integers(0, 500), st.integers(1, 4_000))
def test_lr_stays_between_zero_and_peak(step, warmup, steps):
    cfg = OptimCfg(lr=5e-4, warmup=warmup, steps=warmup + steps)
    assert 0.0 <= lr_at(step, cfg) <= 5e-4 + 1e-12
    if step >= warmup:
        assert lr_at(step + 1, cfg) <= lr_at(step, cfg) + 1e-12   # monotone after warm-up


def test_no_decay_on_gains_biases_embeddings_and_temperature():
    p1, p2 = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(4, 4))
    assert no_decay("visual.ln_pre.weight", p1) and no_decay("transformer.resblocks.0.attn.in_proj_bias", p1)
    assert no_decay("token_embedding.weight", p2) and no_decay("visual.positional_embedding", p2)
    assert no_decay("logit_scale", torch.nn.Parameter(torch.tensor(1.0)))
    assert not no_decay("visual.transformer.resblocks.0.mlp.c_fc.weight", p2)
    assert not no_decay("text_projection", p2)
