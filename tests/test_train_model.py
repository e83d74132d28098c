"""Tests of train/model.py: open_clip parameter names, shapes, temperature, causal text tower; the configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from train import config as config_lib
from train.config import ModelCfg, TextCfg, VisionCfg
from train.model import CLIP

CONFIGS = Path(__file__).resolve().parent.parent / "train" / "configs"


def tiny() -> ModelCfg:
    return ModelCfg(embed_dim=16, vision=VisionCfg(image_size=16, patch_size=8, width=32, layers=2, heads=2),
                    text=TextCfg(context_length=10, vocab_size=49_408, width=32, layers=2, heads=2))


def texts(eot_at=(4, 9)) -> torch.Tensor:
    ids = torch.zeros(len(eot_at), 10, dtype=torch.long)
    for row, end in enumerate(eot_at):
        ids[row, 0], ids[row, 1:end], ids[row, end] = 49406, torch.arange(100, 100 + end - 1), 49407
    return ids


def test_state_dict_names_follow_open_clip():
    names = set(CLIP(tiny()).state_dict())
    block = ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
             "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
             "mlp.c_proj.weight", "mlp.c_proj.bias"]
    expected = {"visual.class_embedding", "visual.positional_embedding", "visual.proj", "visual.conv1.weight",
                "visual.ln_pre.weight", "visual.ln_pre.bias", "visual.ln_post.weight", "visual.ln_post.bias",
                "token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias",
                "text_projection", "logit_scale"}
    expected |= {f"{tower}transformer.resblocks.{i}.{b}" for tower in ("visual.", "") for i in range(2) for b in block}
    assert names == expected


def test_shapes_match_open_clip_for_vit_b32():
    cfg = config_lib.load(CONFIGS / "vit_b32.json")
    with torch.device("meta"):   # no memory, no init cost: shapes only
        sd = CLIP(cfg.model).state_dict()
    assert sd["visual.conv1.weight"].shape == (768, 3, 32, 32)
    assert sd["visual.positional_embedding"].shape == (50, 768)
    assert sd["visual.proj"].shape == (768, 512)
    assert sd["visual.transformer.resblocks.11.attn.in_proj_weight"].shape == (2304, 768)
    assert sd["token_embedding.weight"].shape == (49_408, 512)
    assert sd["positional_embedding"].shape == (77, 512)
    assert sd["text_projection"].shape == (512, 512)
    assert sum(v.numel() for v in sd.values()) == pytest.approx(151.3e6, rel=0.01)   # open_clip: 151.28M


def test_forward_gives_unit_features_and_the_initial_temperature():
    torch.manual_seed(0)
    model = CLIP(tiny())
    image_features, text_features, scale = model(torch.randn(2, 3, 16, 16), texts())
    assert image_features.shape == text_features.shape == (2, 16)
    assert torch.allclose(image_features.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(text_features.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_temperature_is_clamped_at_100():
    model = CLIP(tiny())
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000))
    assert model.scale().item() == pytest.approx(100.0)


def test_text_features_ignore_tokens_after_the_end_token():
    torch.manual_seed(0)
    model = CLIP(tiny()).eval()
    ids = texts(eot_at=(4, 4))
    ids[1, 5:] = 777   # padding replaced by other tokens: the causal mask hides them from the end token
    feats = model.encode_text(ids)
    assert torch.allclose(feats[0], feats[1], atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = CLIP(tiny())
    images = torch.randn(2, 3, 16, 16)

    def grads():
        model.zero_grad()
        image_features, text_features, _ = model(images, texts())
        (image_features @ text_features.T).sum().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = grads()
    model.set_grad_checkpointing(True)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, grads()))


@pytest.mark.parametrize("name", ["tiny.json", "vit_b32.json"])
def test_configs_load_and_round_trip(name):
    cfg = config_lib.load(CONFIGS / name)
    assert config_lib.from_dict(config_lib.to_dict(cfg)) == cfg


def test_unknown_config_keys_are_errors(tmp_path):
    with pytest.raises(ValueError, match="optim"):
        config_lib.load(CONFIGS / "tiny.json", ["optim.learning_rate=0.1"])
    assert config_lib.load(CONFIGS / "tiny.json", ["optim.lr=0.01", "data.resampled=true"]).optim.lr == 0.01


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_attention_equals_multihead_attention_with_the_same_weights(causal):
    """Our SDPA attention keeps nn.MultiheadAttention's parameters (open_clip's layout) and its result."""
    from train.model import Attention
    torch.manual_seed(0)
    ours, reference = Attention(32, 4), torch.nn.MultiheadAttention(32, 4, batch_first=True)
    torch.nn.init.normal_(ours.in_proj_weight, std=0.2)
    torch.nn.init.normal_(ours.in_proj_bias, std=0.2)
    assert set(ours.state_dict()) == set(reference.state_dict())
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(3, 7, 32)
    mask = torch.triu(torch.full((7, 7), float("-inf")), diagonal=1) if causal else None
    expected, _ = reference(x, x, x, attn_mask=mask, need_weights=False)
    assert torch.allclose(ours(x, causal), expected, atol=1e-5)
