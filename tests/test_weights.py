"""Checkpoints in and out (train/weights.py, train/export.py, `--model`, `--init`): files written by the tests
in open_clip's and OpenAI's layouts, holding our tiny model's weights."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.dedup import embed
from train import config as config_lib
from train import export, zeroshot
from train.model import CLIP
from demo.synthetic import draw_shape, shape_classes, write_shards
from train.train import build
from train.weights import WeightsError, load_model, load_weights, model_config

ROOT = Path(__file__).resolve().parent.parent
TINY = config_lib.load(ROOT / "train" / "configs" / "tiny.json")
# train/configs/tiny.json's model as an open_clip model config, written out by hand: 64 wide, 2 heads of 32
TINY_OPEN_CLIP = {"embed_dim": 64, "quick_gelu": False,
                  "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "mlp_ratio": 4.0,
                                 "patch_size": 8},
                  "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2,
                               "mlp_ratio": 4.0}}


def tiny_model(seed: int = 0, quick_gelu: bool = False) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(dataclasses.replace(TINY.model, quick_gelu=quick_gelu)).eval()


def our_checkpoint(path: Path, model: CLIP, step: int = 7) -> Path:
    """What train/train.py saves (less the optimizer and RNG state), for a model of tiny.json's shape."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "config": config_lib.to_dict(TINY), "step": step}, path)
    return path


def open_clip_checkpoint(path: Path, model: CLIP) -> Path:
    """What open_clip's training script saves under DDP: epoch, name, optimizer state, `module.` keys."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 3, "name": "tiny-run", "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0]}]}}, path)
    return path


def write_config(path: Path, values: dict) -> Path:
    path.write_text(json.dumps(values))
    return path


def features(model: CLIP) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(123)
    images = torch.randn(4, 3, 32, 32)
    texts = torch.randint(1, 49_000, (4, 32))
    texts[:, 12], texts[:, 13:] = 49407, 0
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(texts)


def assert_same_features(a: CLIP, b: CLIP) -> None:
    for x, y in zip(features(a), features(b)):
        assert torch.equal(x, y)


# ---- architectures -----------------------------------------------------------------------------------------

def test_open_clip_names_give_their_architectures():
    b32 = model_config("ViT-B-32")
    assert (b32.embed_dim, b32.vision.width, b32.vision.layers, b32.vision.heads, b32.vision.patch_size) == \
        (512, 768, 12, 12, 32)                                # heads = 768 / open_clip's head_width 64
    assert (b32.text.width, b32.text.heads, b32.text.layers, b32.text.context_length) == (512, 8, 12, 77)
    assert not b32.quick_gelu and model_config("ViT-B-32-quickgelu") == dataclasses.replace(b32, quick_gelu=True)
    l14 = model_config("ViT-L-14")
    assert (l14.embed_dim, l14.vision.width, l14.vision.heads, l14.vision.patch_size, l14.text.heads) == \
        (768, 1024, 16, 14, 12)


def test_our_config_and_open_clip_json_give_the_same_architecture(tmp_path):
    assert model_config(str(ROOT / "train" / "configs" / "tiny.json")) == TINY.model
    assert model_config(str(write_config(tmp_path / "tiny.json", TINY_OPEN_CLIP))) == TINY.model


@pytest.mark.parametrize("change, message", [
    ({"vision_cfg": {**TINY_OPEN_CLIP["vision_cfg"], "pool_type": "avg"}},
     "vision_cfg.pool_type='avg' is an open_clip option"),
    ({"text_cfg": {**TINY_OPEN_CLIP["text_cfg"], "hf_model_name": "bert"}}, "text_cfg.hf_model_name='bert'"),
    ({"vision_cfg": {**TINY_OPEN_CLIP["vision_cfg"], "layers": [3, 4, 6, 3]}}, "a ResNet tower"),
    ({"colour": "blue"}, r"unknown open_clip config keys \['colour'\]"),
])
def test_open_clip_options_we_cannot_build_are_refused(tmp_path, change, message):
    with pytest.raises(WeightsError, match=message):
        model_config(str(write_config(tmp_path / "x.json", {**TINY_OPEN_CLIP, **change})))


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(WeightsError, match=r"neither a known name \(ViT-B-16, ViT-B-32, ViT-L-14"):
        model_config("ViT-Q-99")


# ---- files in ----------------------------------------------------------------------------------------------

def test_our_checkpoint_carries_its_architecture(tmp_path):
    original = tiny_model()
    loaded, weights = load_model(our_checkpoint(tmp_path / "ckpt.pt", original))
    assert (weights.format, weights.step, weights.model) == ("ours", 7, TINY.model)
    assert_same_features(original, loaded)


def test_open_clip_checkpoint_with_module_prefixes_loads_with_a_model_config(tmp_path):
    original = tiny_model()
    config = write_config(tmp_path / "tiny-oc.json", TINY_OPEN_CLIP)
    loaded, weights = load_model(open_clip_checkpoint(tmp_path / "epoch_3.pt", original), str(config))
    assert (weights.format, weights.step) == ("open_clip", None)
    assert_same_features(original, loaded)


def test_plain_and_compiled_state_dicts_load(tmp_path):
    original = tiny_model()
    plain = tmp_path / "plain.pt"
    torch.save(original.state_dict(), plain)
    compiled = tmp_path / "compiled.pt"
    torch.save({f"_orig_mod.{k}": v for k, v in original.state_dict().items()}, compiled)
    for path in (plain, compiled):
        loaded, weights = load_model(path, str(ROOT / "train" / "configs" / "tiny.json"))
        assert weights.format == "state_dict"
        assert_same_features(original, loaded)


def test_openai_torchscript_archive_loads_its_fp16_weights(tmp_path):
    # OpenAI ships traced fp16 models; make one from our model with fp16-representable weights
    original = tiny_model(quick_gelu=True)
    with torch.no_grad():
        for p in original.parameters():
            p.copy_(p.half().float())
    images, texts = torch.zeros(1, 3, 32, 32), torch.zeros(1, 32, dtype=torch.long)
    traced = torch.jit.trace(copy.deepcopy(original), (images, texts), check_trace=False)   # shares parameters
    torch.jit.save(traced.half(), tmp_path / "ViT-tiny.pt")
    config = write_config(tmp_path / "tiny-quickgelu.json", {**TINY_OPEN_CLIP, "quick_gelu": True})
    loaded, weights = load_model(tmp_path / "ViT-tiny.pt", str(config))
    assert weights.format == "openai" and all(v.dtype == torch.float16 for v in weights.state_dict.values())
    assert_same_features(original, loaded)
    with pytest.raises(WeightsError, match="OpenAI's weights, which were trained with QuickGELU: use a -quickgelu"):
        load_weights(tmp_path / "ViT-tiny.pt", str(write_config(tmp_path / "gelu.json", TINY_OPEN_CLIP)))


def test_openai_state_dict_entries_that_are_not_weights_are_dropped(tmp_path):
    original = tiny_model(quick_gelu=True)
    path = tmp_path / "openai.pt"
    torch.save({**original.state_dict(), "input_resolution": torch.tensor(32), "context_length": torch.tensor(32),
                "vocab_size": torch.tensor(49408)}, path)
    loaded, weights = load_model(path, dataclasses.replace(TINY.model, quick_gelu=True))
    assert weights.format == "openai" and "input_resolution" not in weights.state_dict
    assert_same_features(original, loaded)


def test_a_misfit_names_the_first_differing_key_and_shapes(tmp_path):
    path = open_clip_checkpoint(tmp_path / "epoch_3.pt", tiny_model())
    with pytest.raises(WeightsError, match=r"does not fit --model ViT-B-32: positional_embedding is \[32, 64\] in "
                                           r"the file, \[77, 512\] in the model$"):
        load_weights(path, "ViT-B-32")
    state = tiny_model().state_dict()
    del state["ln_final.bias"]
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(WeightsError, match=r"ln_final.bias \[64\] is missing from the file"):
        load_weights(tmp_path / "missing.pt", TINY.model)
    torch.save({**tiny_model().state_dict(), "visual.attnpool.k_proj.weight": torch.zeros(2, 2)}, tmp_path / "extra.pt")
    with pytest.raises(WeightsError, match=r"attnpool.k_proj.weight \[2, 2\] is in the file but not in the model"):
        load_weights(tmp_path / "extra.pt", TINY.model)


@pytest.mark.parametrize("content, model, message", [
    (None, None, "no such file"),
    (b"not a checkpoint", None, "not a readable PyTorch weights file"),
    ("state_dict", None, r"\(state_dict format\) carries no model config: give the architecture with --model"),
    ("ours", "ViT-B-32", r"carries its own model config, which differs from the one given \(embed_dim 64 != 512\)"),
])
def test_unusable_files_are_one_line_errors(tmp_path, content, model, message):
    path = tmp_path / "weights.pt"
    if content == "state_dict":
        torch.save(tiny_model().state_dict(), path)
    elif content == "ours":
        our_checkpoint(path, tiny_model())
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=message) as info:
        load_weights(path, model)
    assert "\n" not in str(info.value)


# ---- zero-shot from the command line -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata")
    rng = __import__("random").Random(5)
    for name in shape_classes():
        (root / "shapes" / name.replace(" ", "_")).mkdir(parents=True)
        for i in range(3):
            draw_shape(*name.split(), 32, rng).save(root / "shapes" / name.replace(" ", "_") / f"{i}.jpg")
    write_shards(root / "held", "shapes", shards=1, per_shard=24, image_size=32, seed=2)
    return root / "shapes", f"{root}/held/00000.tar"


def test_open_clip_checkpoint_runs_zero_shot_from_the_cli(tmp_path, eval_data):
    eval_set, pairs = eval_data
    model = tiny_model(seed=3)
    ours = our_checkpoint(tmp_path / "ours" / "ckpt_latest.pt", model)
    theirs = open_clip_checkpoint(tmp_path / "theirs" / "epoch_3.pt", model)
    config = write_config(tmp_path / "theirs" / "tiny-oc.json", TINY_OPEN_CLIP)
    common = ["--eval-set", f"shapes={eval_set}", "--templates", "photo", "--pairs", pairs, "--device", "cpu"]
    expected = zeroshot.main(["--checkpoint", str(ours), *common])
    done = subprocess.run([sys.executable, "-m", "train.zeroshot", "--checkpoint", str(theirs), "--model", str(config),
                           *common, "--out", str(tmp_path / "report.json")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    got = json.loads((tmp_path / "report.json").read_text())
    assert got["format"] == "open_clip" and got["model"] == "tiny-oc" and got["step"] is None
    assert got["classification"] == expected["classification"] and got["retrieval"] == expected["retrieval"]
    assert got["retrieval"]["n"] == 24 and got["classification"]["photo"]["n"] == 3 * len(shape_classes())
    # the same numbers in CLIP_benchmark's layout, named by its default output template
    folder = tmp_path / "clip_benchmark"
    classification = json.loads((folder / "shapes_epoch_3.pt_tiny-oc_en_zeroshot_classification.json").read_text())
    photo = expected["classification"]["photo"]
    assert classification == {"dataset": "shapes", "model": "tiny-oc", "pretrained": "epoch_3.pt",
                              "task": "zeroshot_classification", "language": "en", "templates": ["a photo of a {}."],
                              "metrics": {"acc1": photo["top1"], "acc5": photo["top5"],
                                          "mean_per_class_recall": photo["mean_per_class_recall"]}}
    retrieval = json.loads((folder / "held_epoch_3.pt_tiny-oc_en_zeroshot_retrieval.json").read_text())
    r = expected["retrieval"]
    assert retrieval["task"] == "zeroshot_retrieval" and retrieval["metrics"] == {
        **{f"image_retrieval_recall@{k}": r[f"text_to_image_R@{k}"] for k in (1, 5, 10)},
        **{f"text_retrieval_recall@{k}": r[f"image_to_text_R@{k}"] for k in (1, 5, 10)}}


def test_zero_shot_cli_error_is_one_line(tmp_path, eval_data):
    theirs = open_clip_checkpoint(tmp_path / "epoch_3.pt", tiny_model())
    done = subprocess.run([sys.executable, "-m", "train.zeroshot", "--checkpoint", str(theirs), "--model", "ViT-B-32",
                           "--eval-set", str(eval_data[0])], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"zeroshot: {theirs} does not fit --model ViT-B-32: positional_embedding is [32, 64] in the file, "
        "[77, 512] in the model"]


def test_acc5_is_nan_below_five_classes_as_in_clip_benchmark():
    m = {"top1": 0.5, "top5": 1.0, "mean_per_class_recall": 0.5}
    assert zeroshot.clip_benchmark_classification(m, 4)["acc5"] != zeroshot.clip_benchmark_classification(m, 4)["acc5"]
    assert zeroshot.clip_benchmark_classification(m, 5) == {"acc1": 0.5, "acc5": 1.0, "mean_per_class_recall": 0.5}


# ---- files out ---------------------------------------------------------------------------------------------

def test_export_then_reimport_gives_identical_features(tmp_path, capsys):
    model = tiny_model(seed=4)
    our_checkpoint(tmp_path / "runs" / "tiny" / "ckpt_latest.pt", model)
    weights_path, config_path = map(Path, export.main([str(tmp_path / "runs" / "tiny"), "--out",
                                                       str(tmp_path / "exported")]))
    assert (weights_path.name, config_path.name) == ("witbuild-tiny.pt", "witbuild-tiny.json")
    assert json.loads(config_path.read_text()) == TINY_OPEN_CLIP
    state = torch.load(weights_path, weights_only=True)           # weights only: no optimizer, RNG or config
    assert set(state) == set(model.state_dict()) and all(v.dtype == torch.float32 for v in state.values())
    loaded, weights = load_model(weights_path, str(config_path))
    assert weights.format == "state_dict"
    assert_same_features(model, loaded)
    printed = capsys.readouterr().out
    assert f"open_clip.add_model_config({str(config_path)!r})" in printed
    assert f"open_clip.create_model_and_transforms('witbuild-tiny', pretrained={str(weights_path)!r})" in printed


# ---- the other consumers: --init and dedup's encoder -------------------------------------------------------

def test_init_starts_training_from_open_clip_weights(tmp_path):
    model = tiny_model(seed=5)
    path = open_clip_checkpoint(tmp_path / "epoch_3.pt", model)
    _, raw_model, _, _, step, position = build(TINY, None, 0, 1, torch.device("cpu"), "fp32", str(path))
    assert (step, position) == (0, (0, 0))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in raw_model.state_dict().items())
    other = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, embed_dim=32))
    with pytest.raises(SystemExit, match=r"^train: --init .*epoch_3.pt does not fit the model config: "
                                         r"text_projection is \[64, 64\] in the file, \[64, 32\] in the model$"):
        build(other, None, 0, 1, torch.device("cpu"), "fp32", str(path))


def test_train_cli_init_starts_from_the_file(tmp_path, eval_data):
    from train import train
    model = tiny_model(seed=7)
    path = open_clip_checkpoint(tmp_path / "epoch_3.pt", model)
    # one step at learning rate 0: AdamW moves nothing, so the saved weights are the file's
    train.main(["--shards", eval_data[1], "--out", str(tmp_path / "ft"), "--init", str(path), "--steps", "1",
                "--batch-size", "8", "--lr", "0", "--warmup", "1", "--config", str(ROOT / "train/configs/tiny.json"),
                "--workers", "0", "--set", "run.threads=1", "--set", "data.shuffle_buffer=16", "--set",
                "data.shuffle_initial=8"])
    saved = torch.load(tmp_path / "ft" / "ckpt_latest.pt", weights_only=True)
    assert saved["step"] == 1 and all(torch.equal(v, model.state_dict()[k]) for k, v in saved["model"].items())


def test_dedup_encoder_reads_open_clip_files_with_their_model(tmp_path):
    model = tiny_model(seed=6)
    ours = embed.load_encoder(str(our_checkpoint(tmp_path / "ckpt.pt", model)), "cpu")
    config = str(write_config(tmp_path / "tiny-oc.json", TINY_OPEN_CLIP))
    theirs = embed.load_encoder(str(open_clip_checkpoint(tmp_path / "epoch_3.pt", model)), "cpu", config)
    assert_same_features(ours.model, theirs.model)
    assert (theirs.image_size, theirs.dim) == (32, 64) and theirs.key != ours.key
    with pytest.raises(embed.CheckpointError, match=r"^--embed-checkpoint .*epoch_3.pt \(open_clip format\) carries "
                                                    r"no model config"):
        embed.load_encoder(str(tmp_path / "epoch_3.pt"), "cpu")
