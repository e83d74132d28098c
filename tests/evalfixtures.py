"""Tiny eval sets and shards for the dedup / overlap / evalsets tests, made in the test (never ../shared/data).

Images are smooth random patterns (an 8x8 random grid upsampled): like photos they carry their information in
low frequencies, and two different seeds give pHashes ~32 bits apart, so planted copies are the only matches.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

MTIME = 1_700_000_000  # fixed member mtime: reproducible shards


def pattern_image(seed: int, size: int = 96) -> Image.Image:
    """A smooth random RGB picture, different for every seed."""
    grid = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(grid, "RGB").resize((size, size), Image.Resampling.BICUBIC)


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def web_copy(image: Image.Image) -> bytes:
    """What the web does to an eval image: resized up, then recompressed at low quality."""
    return jpeg_bytes(image.resize((200, 200), Image.Resampling.BILINEAR), quality=45)


def write_imagefolder(root: Path, seeds_per_class: dict[str, list[int]]) -> Path:
    for cls, seeds in seeds_per_class.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            (root / cls / f"{seed:04d}.jpg").write_bytes(jpeg_bytes(pattern_image(seed)))
    return root


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), MTIME
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, samples: list[tuple[str, bytes | None]]) -> Path:
    """An img2dataset-layout shard: KEY.jpg (unless None), KEY.txt, KEY.json per (key, image bytes)."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, image in samples:
            caption = f"caption of {key}"
            if image is not None:
                add_member(tar, f"{key}.jpg", image)
            add_member(tar, f"{key}.txt", caption.encode())
            meta = {"uid": key, "url": f"http://example.com/{key}.jpg", "caption": caption, "query_ids": [1]}
            add_member(tar, f"{key}.json", json.dumps(meta).encode())
    return path


def write_wds_eval(path: Path, items: list[tuple[str, int, bytes]]) -> Path:
    """A CLIP_benchmark-style eval shard: KEY.png/jpg + KEY.cls."""
    with tarfile.open(path, "w:gz") as tar:
        for key, label, image in items:
            add_member(tar, f"{key}.jpg", image)
            add_member(tar, f"{key}.cls", str(label).encode())
    return path


EVAL_SEEDS = {"cat": [1, 2, 3], "dog": [4, 5, 6]}
PLANTED = {"u_dup_a": 1, "u_dup_b": 5, "u_dup_c": 6}          # shard key -> eval seed it copies


def make_planted(tmp_path: Path) -> tuple[Path, Path]:
    """An eval ImageFolder (6 images, `EVAL_SEEDS`) and two shards: 3 web copies of eval images (`PLANTED`)
    among 17 other images, one sample with a truncated JPEG and one without any image (22 samples)."""
    eval_root = write_imagefolder(tmp_path / "evalset", EVAL_SEEDS)
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    samples = [(f"u_other_{i:02d}", jpeg_bytes(pattern_image(1000 + i), 85)) for i in range(17)]
    samples += [(key, web_copy(pattern_image(seed))) for key, seed in PLANTED.items()]
    samples += [("u_truncated", jpeg_bytes(pattern_image(2000))[:300]), ("u_noimage", None)]
    samples.sort()
    write_shard(shard_dir / "00000.tar", samples[:11])
    write_shard(shard_dir / "00001.tar", samples[11:])
    return eval_root, shard_dir
