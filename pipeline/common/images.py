"""Images in samples, and their decoding, shared by every stage, the trainer and zero-shot evaluation (so that
dedup sees an image exactly as evaluation does)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")   # img2dataset's output formats, in the order we look


def image_member(sample: dict) -> bytes | None:
    """The image of a WebDataset sample ({extension: bytes}): its first member with an image extension."""
    return next((sample[ext] for ext in IMAGE_EXTENSIONS if ext in sample), None)


# Exceptions a corrupt sample raises while decoding (PIL signals some broken headers with SyntaxError).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def open_rgb(data: bytes, min_side: int) -> Image.Image:
    """Decode to RGB; JPEGs decode at a reduced DCT scale when they are much larger than needed."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (min_side, min_side))   # JPEG only: both sides stay >= min_side
    return image.convert("RGB")


def eval_image(data: bytes, size: int) -> np.ndarray:
    """An encoded image -> uint8 (size, size, 3) as open_clip's eval preprocessing sees it: full decode (no JPEG
    draft scaling), then `eval_transform`. Zero-shot, retrieval and dedup's embeddings all read images here."""
    return eval_transform(Image.open(io.BytesIO(data)), size)


def eval_transform(image: Image.Image, size: int) -> np.ndarray:
    """open_clip 3.3.0's `image_transform(size, is_train=False)` before ToTensor, step by step: torchvision's
    `Resize(size)` (short side to `size`, long side `int(size * long / short)`, truncated; bicubic, in the image's
    own mode: PIL resizes palette images by nearest neighbour, RGBA premultiplied), `CenterCrop(size)` (offsets
    `int(round((side - size) / 2))`, Python's half-to-even), then `convert("RGB")`. Normalisation with OpenAI's
    mean/std follows in train.data's `to_model_input`."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if short != size:
        new_long = int(size * long / short)
        image = image.resize((size, new_long) if width <= height else (new_long, size), Image.BICUBIC)
    left, top = int(round((image.width - size) / 2.0)), int(round((image.height - size) / 2.0))
    return np.asarray(image.crop((left, top, left + size, top + size)).convert("RGB"))
