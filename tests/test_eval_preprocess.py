"""Eval preprocessing (pipeline/common/images.py `eval_image`) against open_clip's
`image_transform(size, is_train=False)`, written out step by step with the sizes and offsets computed by hand:
torchvision's Resize truncates the long side, CenterCrop rounds its offsets half to even, RGB conversion comes
after both, and nothing is draft-decoded."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.common.images import eval_image
from train.data import OPENAI_MEAN, OPENAI_STD, to_model_input


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def columns_image(width: int, height: int) -> Image.Image:
    """Grey image whose pixel value is 10 x its column: a crop's offset can be read off its first pixel."""
    return Image.fromarray(np.tile(np.arange(width, dtype=np.uint8) * 10, (height, 1)), "L")


@pytest.mark.parametrize("width, left", [
    (11, 4),   # (11 - 4) / 2 = 3.5 -> 4 (a floor would give 3)
    (9, 2),    # 2.5 -> 2: Python's round is half to even, as torchvision's int(round(...))
    (7, 2),    # 1.5 -> 2
    (4, 0),
])
def test_centre_crop_offsets_round_as_torchvision(width, left):
    # the short side (height 4) already has the target size: no resampling, pixels are copied
    got = eval_image(encode(columns_image(width, 4)), 4)
    assert got.shape == (4, 4, 3) and got.dtype == np.uint8
    assert got[0, :, 0].tolist() == [10 * c for c in range(left, left + 4)]
    assert (got == got[..., :1]).all()                       # grey -> RGB repeats the value


def test_long_side_is_truncated_then_crop_rounded():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (5, 3, 3), dtype=np.uint8))   # 3 wide, 5 high
    # size 4: long side int(4 * 5 / 3) = int(6.67) = 6 (rounding would give 7), top = round((6 - 4) / 2) = 1
    expected = np.asarray(image.resize((4, 6), Image.BICUBIC).crop((0, 1, 4, 5)))
    assert np.array_equal(eval_image(encode(image), 4), expected)
    wrong = np.asarray(image.resize((4, 7), Image.BICUBIC).crop((0, 2, 4, 6)))  # the old rounding
    assert not np.array_equal(expected, wrong)


def test_palette_image_is_resized_before_conversion_to_rgb():
    # 2 palette colours in a checkerboard: resized in mode P, PIL uses nearest neighbour, so only the
    # palette's colours come out; converting to RGB first would blend them by bicubic interpolation
    board = (np.indices((6, 9)).sum(0) % 2).astype(np.uint8)
    image = Image.fromarray(board, "P")
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    got = eval_image(encode(image), 4)
    # short side 6 -> 4, long int(4 * 9 / 6) = 6, left round(1.0) = 1
    expected = np.asarray(image.resize((6, 4), Image.NEAREST).crop((1, 0, 5, 4)).convert("RGB"))
    assert np.array_equal(got, expected)
    assert {tuple(p) for p in got.reshape(-1, 3)} <= {(255, 0, 0), (0, 0, 255)}


def test_transparent_pixels_do_not_bleed_because_rgba_is_resized_premultiplied():
    # left half: fully transparent red; right half: opaque blue. Resized as RGBA (PIL premultiplies alpha),
    # the invisible red does not leak into the blue; converted to RGB first it would.
    pixels = np.zeros((8, 16, 4), dtype=np.uint8)
    pixels[:, :8] = (255, 0, 0, 0)
    pixels[:, 8:] = (0, 0, 255, 255)
    image = Image.fromarray(pixels, "RGBA")
    got = eval_image(encode(image), 4)                       # 16x8 -> 8x4, left round(2.0) = 2
    expected = np.asarray(image.resize((8, 4), Image.BICUBIC).crop((2, 0, 6, 4)).convert("RGB"))
    assert np.array_equal(got, expected)
    assert got[:, -1].tolist() == [[0, 0, 255]] * 4 and got[:, :, 0].max() == 0
    rgb_first = np.asarray(image.convert("RGB").resize((8, 4), Image.BICUBIC).crop((2, 0, 6, 4)))
    assert rgb_first[:, :, 0].max() > 0


def test_jpeg_is_decoded_at_full_resolution():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (256, 320, 3), dtype=np.uint8))
    data = encode(image, "JPEG", quality=90)
    full = Image.open(io.BytesIO(data))
    full.load()
    # short side 256 -> 32, long int(32 * 320 / 256) = 40, left round(4.0) = 4
    expected = np.asarray(full.resize((40, 32), Image.BICUBIC).crop((4, 0, 36, 32)))
    assert np.array_equal(eval_image(data, 32), expected)
    drafted = Image.open(io.BytesIO(data))
    drafted.draft("RGB", (32, 32))                           # what the training decode does: 1/8 scale
    assert not np.array_equal(np.asarray(drafted.convert("RGB").resize((40, 32), Image.BICUBIC).crop((4, 0, 36, 32))),
                              expected)


def test_model_input_uses_openai_mean_and_std():
    pixels = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(1, 3, 1, 3)
    got = to_model_input(pixels.contiguous(), "cpu")
    for c in range(3):
        expected = [(v / 255 - OPENAI_MEAN[c]) / OPENAI_STD[c] for v in (0, 128, 255)]
        assert got[0, c, 0].tolist() == pytest.approx(expected, abs=1e-6)
    assert OPENAI_MEAN == (0.48145466, 0.4578275, 0.40821073) and OPENAI_STD == (0.26862954, 0.26130258, 0.27577711)
