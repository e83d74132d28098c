"""Image decoding shared by the trainer, zero-shot evaluation and dedup's embedding signal, so that dedup sees an
image exactly as evaluation does."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Exceptions a corrupt sample raises while decoding (PIL signals some broken headers with SyntaxError).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def open_rgb(data: bytes, min_side: int) -> Image.Image:
    """Decode to RGB; JPEGs decode at a reduced DCT scale when they are much larger than needed."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (min_side, min_side))   # JPEG only: both sides stay >= min_side
    return image.convert("RGB")


def eval_transform(image: Image.Image, size: int) -> np.ndarray:
    """open_clip's eval preprocessing: resize the shorter side to `size` (bicubic), centre crop."""
    image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    image = image.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)))
