"""Tests of the training loader's image path (train/data.py): simplejpeg decode, crop + resize, batches.

The loader used to decode with PIL and resize with PIL's `resize(..., box=crop)`; it now decodes with
simplejpeg and resizes the crop with torch, in the loader (CPU training) or, for a GPU, on the device in one
batched op (`to_model_input` with boxes). These tests hold the new paths to the old one: the same decoded
pixels, the same samples in the same order with the same crop boxes, and stated pixel bounds.
"""

from __future__ import annotations

import io
import math
import random
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bench.bench_train import previous_transform   # the loader's PIL path before the change
from demo.synthetic import noise_sample, shapes_sample, write_shards
from pipeline.common.files import expand
from pipeline.common.images import DECODE_ERRORS, open_rgb
from train.config import DataCfg
from train.data import (OPENAI_MEAN, OPENAI_STD, SkipCounter, crop_and_resize, crop_for_device, crops_on_canvas,
                        decode_for_training, draft_scale, largest_crop, make_loader, make_pipeline,
                        random_resized_crop_box, resize_boxes, resize_on_device, sample_image_and_caption,
                        shuffle_samples, tar_to_samples, to_model_input, train_transform, worker_rng)

PHOTOS = sorted((Path(__file__).resolve().parent.parent / "data" / "sample" / "photos").glob("*"))


def encode(image: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def photo(size=(600, 450), seed=0) -> Image.Image:
    """A smooth colour field with noise: JPEG-compressible like a photo, any size."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    return Image.fromarray((np.asarray(field, dtype=np.int16) + rng.integers(-8, 9, (size[1], size[0], 3)))
                           .clip(0, 255).astype(np.uint8))


def pil_rgb(data: bytes, min_side: int) -> np.ndarray:
    return np.asarray(open_rgb(data, min_side))


# ---- decode ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("min_side", [1000, 280, 150, 100, 40, 1])
@pytest.mark.parametrize("subsampling", [0, 2])   # 4:4:4 and 4:2:0
def test_jpeg_decode_equals_pils_at_every_draft_scale(min_side, subsampling):
    data = encode(photo(), quality=90, subsampling=subsampling)
    got = decode_for_training(data, min_side)
    assert np.array_equal(got, pil_rgb(data, min_side))


def test_draft_scale_is_pils():
    for (w, h, side), scale in {(600, 450, 280): 1, (600, 450, 200): 2, (600, 450, 100): 4, (600, 450, 50): 8,
                                (600, 450, 10): 8, (100, 100, 280): 1}.items():
        assert draft_scale(w, h, side) == scale
        image = Image.open(io.BytesIO(encode(photo((w, h)))))
        image.draft("RGB", (side, side))
        assert image.size == (math.ceil(w / scale), math.ceil(h / scale))


def test_grey_cmyk_png_and_webp_decode_as_pil_does():
    rgb = photo((120, 90))
    for data in (encode(rgb.convert("L")), encode(rgb.convert("CMYK")), encode(rgb, "PNG"), encode(rgb, "WEBP"),
                 encode(rgb.convert("RGBA"), "PNG")):
        assert np.array_equal(decode_for_training(data, 50), pil_rgb(data, 50))


def test_broken_jpegs_raise_decode_errors():
    data = encode(photo())
    for broken in (data[: len(data) // 2], data[:200], b"\xff\xd8\xff" + b"\x00" * 50):
        with pytest.raises(DECODE_ERRORS):
            decode_for_training(broken, 100)


def test_decompression_bomb_limit_is_pils(monkeypatch):
    data = encode(photo((300, 200)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 200 // 2 - 1)   # PIL refuses above twice the limit
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))
    with pytest.raises(Image.DecompressionBombError):
        decode_for_training(data, 50)


# ---- crop and resize ---------------------------------------------------------------------------------------

def torchvision_on_pil(data: bytes, size: int, scale, rng: random.Random) -> np.ndarray:
    """open_clip's RandomResizedCrop on a PIL image (torchvision's resized_crop: crop, then resize)."""
    image = open_rgb(data, math.ceil(size / 0.8))
    box = random_resized_crop_box(*image.size, scale, rng)
    return np.asarray(image.crop(box).resize((size, size), Image.BICUBIC))


def test_inputs_cover_shrinking_and_enlarging():
    assert len(PHOTOS) >= 8, "data/sample/photos is missing: run `make sample-data`"


@pytest.mark.parametrize("size,scale", [(224, (0.9, 1.0)), (32, (0.9, 1.0)), (224, (0.08, 1.0)), (16, (0.9, 1.0))])
def test_crop_and_resize_is_within_two_levels_of_pil(size, scale):
    rng = random.Random(1)
    inputs = [p.read_bytes() for p in PHOTOS] + [encode(noise_sample(i, 256, rng)[0], quality=90) for i in range(8)]
    inputs += [encode(shapes_sample(i, 24, rng)[0]) for i in range(8)]   # 24 px: enlarged to 32 and 224
    means = []
    for data in inputs:
        expected = torchvision_on_pil(data, size, scale, random.Random(7))
        got = train_transform(data, size, scale, random.Random(7)).permute(1, 2, 0).numpy()
        diff = np.abs(expected.astype(int) - got)
        assert diff.max() <= 2
        means.append(diff.mean())
    assert np.mean(means) < 0.02


def test_resize_into_a_batch_row_equals_torch_interpolate():
    pixels = np.array(photo((300, 260)))
    block = torch.zeros((2, 3, 224, 224), dtype=torch.uint8)
    for row, box in enumerate([(10, 5, 260, 250), (0, 0, 224, 224)]):   # shrink; exact size (a plain copy)
        crop_and_resize(pixels, box, block[row])
        crop = torch.from_numpy(pixels[box[1]:box[3], box[0]:box[2]].copy()).permute(2, 0, 1)[None]
        expected = F.interpolate(crop, size=(224, 224), mode="bicubic", antialias=True)[0]
        assert torch.equal(block[row], expected)


def test_against_the_previous_path_only_the_crop_border_differs():
    """The old box resize read pixels outside the crop near its edges: inside a 4 px border, <= 2 levels."""
    rng = random.Random(2)
    for i in range(10):
        data = encode(noise_sample(i, 256, rng)[0], quality=90)
        old = previous_transform(data, 224, (0.9, 1.0), random.Random(i))
        new = train_transform(data, 224, (0.9, 1.0), random.Random(i)).permute(1, 2, 0).numpy()
        assert np.abs(old[4:-4, 4:-4].astype(int) - new[4:-4, 4:-4]).max() <= 2


# ---- the pipeline: same samples, same order, same crops ----------------------------------------------------

@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    write_shards(out, "noise", shards=3, per_shard=20, image_size=64)
    return expand(f"{out}/{{00000..00002}}.tar", ".tar")


def previous_pipeline(urls, size, seed, epoch, bufsize, initial, transform=previous_transform):
    """(key, image) in the order the earlier loader gave them: the same stages, decoded the old way
    (or what `transform(data, size, scale, rng)` makes of each image)."""
    skips = SkipCounter("raise")
    samples = shuffle_samples(tar_to_samples([{"url": u} for u in urls], skips.handler), bufsize, initial, seed,
                              epoch)
    rng = worker_rng(seed, epoch, "augment")
    for sample in samples:
        data, _ = sample_image_and_caption(sample)
        yield sample["__key__"], transform(data, size, (0.9, 1.0), rng)


def previous_box_size(data: bytes, size: int, scale, rng: random.Random) -> tuple[int, int]:
    """(width, height) of the crop the earlier loader drew (PIL decode at the draft scale, the same draws)."""
    image = open_rgb(data, math.ceil(size / 0.8))
    left, top, right, bottom = random_resized_crop_box(*image.size, scale, rng)
    return right - left, bottom - top


def test_loader_gives_the_previous_samples_in_the_previous_order(shards):
    cfg = DataCfg(batch_size=7, workers=0, shuffle_buffer=10, shuffle_initial=3, on_error="raise")
    batches = list(make_pipeline(shards, cfg, 48, 16, seed=5, epoch=1))
    expected = list(previous_pipeline(shards, 48, seed=5, epoch=1, bufsize=10, initial=3))
    assert [k for b in batches for k in b["keys"]] == [k for k, _ in expected]
    got = torch.cat([b["images"] for b in batches]).permute(0, 2, 3, 1).numpy()
    old = np.stack([image for _, image in expected])
    inner = np.abs(old[:, 4:-4, 4:-4].astype(int) - got[:, 4:-4, 4:-4])   # same crops: interiors agree
    assert inner.max() <= 2 and inner.mean() < 0.05


def test_batches_are_one_uint8_block(shards):
    cfg = DataCfg(batch_size=8, workers=0, shuffle_buffer=10, shuffle_initial=3, on_error="raise")
    batches = list(make_pipeline(shards, cfg, 32, 16, seed=0, epoch=0))
    assert [len(b["keys"]) for b in batches] == [8] * 7 + [4]
    for b in batches:
        assert b["images"].dtype == torch.uint8 and b["images"].is_contiguous()
        assert b["images"].shape == (len(b["keys"]), 3, 32, 32) and b["texts"].shape == (len(b["keys"]), 16)


# ---- normalisation on the device ---------------------------------------------------------------------------

def test_uint8_to_normalised_on_hand_made_tensors():
    images = torch.zeros((2, 3, 2, 2), dtype=torch.uint8)
    images[0, :, 0, 0] = torch.tensor([0, 128, 255], dtype=torch.uint8)
    images[1] = 255
    x = to_model_input(images.contiguous(memory_format=torch.channels_last), "cpu")
    assert x.dtype == torch.float32 and x.shape == (2, 3, 2, 2)
    mean, std = OPENAI_MEAN, OPENAI_STD
    assert x[0, 0, 0, 0].item() == pytest.approx((0 - mean[0]) / std[0], abs=1e-5)
    assert x[0, 1, 0, 0].item() == pytest.approx((128 / 255 - mean[1]) / std[1], abs=1e-5)
    assert x[0, 2, 0, 0].item() == pytest.approx((1 - mean[2]) / std[2], abs=1e-5)
    assert x[0, 0, 1, 1].item() == pytest.approx(-mean[0] / std[0], abs=1e-5)   # a zero pixel elsewhere
    assert torch.allclose(x[1], torch.tensor([(1 - m) / s for m, s in zip(mean, std)]).view(3, 1, 1).expand(3, 2, 2),
                          atol=1e-5)


# ---- the resize on the device: one batched op over the batch's crops ---------------------------------------

LEVELS = torch.tensor(OPENAI_STD).view(1, 3, 1, 1) * 255   # one grey level of a normalised model input


def test_box_resize_of_an_exact_size_box_is_the_box():
    images = torch.randint(0, 256, (2, 3, 7, 9), generator=torch.Generator().manual_seed(0)).float()
    boxes = torch.tensor([[1, 2, 4, 5], [5, 0, 8, 3]], dtype=torch.float32)   # 3 x 3 boxes, resized to 3
    out = resize_boxes(images, boxes, 3)
    assert torch.equal(out[0], images[0, :, 2:5, 1:4]) and torch.equal(out[1], images[1, :, 0:3, 5:8])


def test_box_resize_of_a_constant_and_of_a_ramp_gives_known_pixels():
    constant = torch.full((1, 3, 20, 30), 77.0)
    for box in ([0, 0, 30, 20], [3, 1, 25, 18], [10, 10, 12, 13]):   # shrink, shrink, enlarge
        out = resize_boxes(constant, torch.tensor([box], dtype=torch.float32), 8)
        assert torch.allclose(out, constant[:, :, :8, :8])
    # pixel j holds 10 j (its centre at j + 0.5); box columns 4..20 resized to 8: output i samples the
    # centre 4 + 2 (i + 0.5); the cubic (a = -0.5), stretched to 4 px on each side, reproduces a linear ramp
    # exactly where it stays inside the box: i = 2..5 -> 10 (4 + 2 (i + 0.5) - 0.5) = 45 + 20 i
    ramp = (10 * torch.arange(26.0)).expand(1, 3, 12, 26).clone()
    out = resize_boxes(ramp, torch.tensor([[4, 0, 20, 12]], dtype=torch.float32), 8)
    assert torch.allclose(out[0, :, 0, 2:6], torch.tensor([85.0, 105, 125, 145]).expand(3, 4), atol=1e-3)
    assert out[0, 0, 0, 0] > 45 and out[0, 0, 0, 7] < 185   # the edges: the crop's own edges bend the ramp


def test_box_resize_equals_torch_interpolate_of_each_crop():
    """Per box, torch's float antialiased bicubic of the crop alone (values inside 0..255: no clamping)."""
    g = torch.Generator().manual_seed(3)
    images = 40 + 175 * F.interpolate(torch.rand((4, 3, 6, 8), generator=g), size=(60, 80), mode="bilinear")
    boxes = [(0, 0, 80, 60), (7, 3, 61, 52), (30, 20, 42, 35), (1, 2, 79, 9)]   # shrink, shrink, enlarge, flat
    out = resize_boxes(images, torch.tensor(boxes, dtype=torch.float32), 24)
    for i, (left, top, right, bottom) in enumerate(boxes):
        crop = images[i:i + 1, :, top:bottom, left:right]
        expected = F.interpolate(crop, size=(24, 24), mode="bicubic", antialias=True)[0]
        assert torch.allclose(out[i], expected, atol=1e-3), i


def device_input(data: bytes, size: int, scale, seed: int) -> torch.Tensor:
    images, boxes = crops_on_canvas([crop_for_device(data, size, scale, random.Random(seed), largest_crop(size))])
    return to_model_input(images, "cpu", boxes, size)


@pytest.mark.parametrize("size,scale", [(224, (0.9, 1.0)), (32, (0.9, 1.0)), (224, (0.08, 1.0)), (16, (0.9, 1.0))])
def test_device_resize_is_within_a_level_of_the_loaders(size, scale):
    """The stated bound: on photos, smooth noise and enlarged shapes, the device path's model input is within
    1.25 grey levels of the loader path's (measured: max 1.1, mean 0.09-0.22), the same crops resized by the
    same filter; the loader's kernel rounds to uint8, also between its passes, the device's does not."""
    rng = random.Random(1)
    inputs = [p.read_bytes() for p in PHOTOS] + [encode(noise_sample(i, 256, rng)[0], quality=90) for i in range(8)]
    inputs += [encode(shapes_sample(i, 24, rng)[0]) for i in range(8)]
    means = []
    for data in inputs:
        loader = to_model_input(train_transform(data, size, scale, random.Random(7))[None], "cpu")
        diff = ((device_input(data, size, scale, 7) - loader) * LEVELS).abs()
        assert diff.max() <= 1.25
        means.append(diff.mean().item())
    assert max(means) < 0.35 and np.mean(means) < 0.25


@pytest.mark.parametrize("mode,image", [
    ("RGB", (1, 1)), ("RGB", (2, 3)), ("RGB", (2000, 40)), ("RGB", (40, 2000)), ("RGB", (300, 256)),
    ("RGB", (1200, 900)), ("RGB", (900, 1200)), ("L", (300, 200)), ("CMYK", (200, 300)), ("RGBA", (257, 500))])
def test_odd_images_resize_on_the_device_as_in_the_loader(mode, image):
    """Tiny, very wide or tall, larger than the largest crop sent unresized (resized in the loader then),
    grey, CMYK, alpha: the same model input within the stated bound."""
    picture = photo(image, seed=4).convert(mode)
    data = encode(picture, "PNG") if mode == "RGBA" else encode(picture, quality=90)
    for seed in range(3):
        loader = to_model_input(train_transform(data, 224, (0.9, 1.0), random.Random(seed))[None], "cpu")
        assert ((device_input(data, 224, (0.9, 1.0), seed) - loader) * LEVELS).abs().max() <= 1.25


def test_crops_larger_than_the_largest_come_resized_and_pass_the_device_unchanged():
    data = encode(photo((1200, 900)), quality=90)   # decoded at 600 x 450: its crops exceed 344
    crop = crop_for_device(data, 224, (0.9, 1.0), random.Random(0), largest_crop(224))
    assert crop.shape == (224, 224, 3)
    expected = train_transform(data, 224, (0.9, 1.0), random.Random(0))[None]
    assert torch.allclose(device_input(data, 224, (0.9, 1.0), 0), to_model_input(expected, "cpu"), atol=1e-4)


def test_canvas_holds_each_crop_at_its_top_left_sized_to_the_largest():
    crops = [np.full((5, 7, 3), 1, np.uint8), np.full((9, 4, 3), 2, np.uint8), np.full((2, 2, 3), 3, np.uint8)]
    images, boxes = crops_on_canvas(crops)
    assert images.shape == (3, 3, 9, 7) and images.dtype == torch.uint8
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert boxes.tolist() == [[0, 0, 7, 5], [0, 0, 4, 9], [0, 0, 2, 2]]
    for row, crop in enumerate(crops):
        h, w = crop.shape[:2]
        assert torch.equal(images[row, :, :h, :w], torch.from_numpy(crop).permute(2, 0, 1))
    assert largest_crop(224) == 344 and largest_crop(32) == 56


def test_resize_mode_auto_is_the_device_on_cuda_and_the_loader_elsewhere():
    assert resize_on_device("auto", "cuda") and not resize_on_device("auto", "cpu")
    assert resize_on_device("device", "cpu") and not resize_on_device("loader", "cuda")
    with pytest.raises(ValueError, match="data.resize must be one of auto, loader, device"):
        resize_on_device("gpu", "cuda")
    with pytest.raises(ValueError, match="boxes need the output size"):
        to_model_input(torch.zeros((1, 3, 4, 4), dtype=torch.uint8), "cpu", torch.tensor([[0.0, 0, 4, 4]]))


@pytest.mark.parametrize("workers", [0, 2])
def test_device_resized_batches_hold_the_same_samples_crops_and_captions(shards, workers):
    """The same samples in the same order, the same crop boxes (the RNG draws are the loader's), the same
    captions; the model input within the stated bound; through DataLoader workers' shared memory too."""
    base = dict(batch_size=7, shuffle_buffer=10, shuffle_initial=3, on_error="raise")
    loader = list(make_loader(shards, DataCfg(workers=workers, resize="loader", **base), 48, 16, seed=5, epoch=1))
    device = list(make_loader(shards, DataCfg(workers=workers, resize="device", **base), 48, 16, seed=5, epoch=1))
    assert [b["keys"] for b in device] == [b["keys"] for b in loader]
    by_key = {}
    for b in loader:
        x = to_model_input(b["images"], "cpu")
        by_key.update({k: (x[i], b["texts"][i]) for i, k in enumerate(b["keys"])})
    expected = dict(previous_pipeline(shards, 48, seed=5, epoch=1, bufsize=10, initial=3, transform=previous_box_size))
    for b in device:
        assert b["size"] == 48 and b["images"].dtype == torch.uint8 and b["boxes"].shape == (len(b["keys"]), 4)
        x = to_model_input(b["images"], "cpu", b["boxes"], b["size"])
        assert x.shape == (len(b["keys"]), 3, 48, 48)
        for i, key in enumerate(b["keys"]):
            assert ((x[i] - by_key[key][0]) * LEVELS[0]).abs().max() <= 1.25
            assert torch.equal(b["texts"][i], by_key[key][1])
            if workers == 0:   # (with 2 workers, each draws from its own generator)
                width, height = expected[key]
                assert b["boxes"][i].tolist() == [0, 0, width, height]
