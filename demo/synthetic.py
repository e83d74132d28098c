"""Generated WebDataset shards for tests, benchmarks and smoke runs: no file from outside the repository.

Stage: `train` (inputs for it). Out: `DIR/{00000..}.tar` in img2dataset's layout (`KEY.jpg`, `KEY.txt`,
`KEY.json`) plus `NNNNN_stats.json` with "successes", like img2dataset writes.

- `shapes`: a coloured shape on a grey background captioned "a red circle": learnable, so a few
  training steps visibly lower the loss, and zero-shot on the colour x shape classes is above chance.
- `noise`: random smooth-plus-noise JPEGs with random captions, for loader and GPU throughput benchmarks
  (file sizes close to real photos of the same size: ~17 KB at 256 px, quality 90).

Run: python -m demo.synthetic --out shards/shapes --kind shapes --shards 8 --per-shard 500
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import multiprocessing
import random
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image, ImageDraw

from pipeline.common.logs import setup_logging

log = logging.getLogger(__name__)

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 30)}
SHAPES = ("circle", "square", "triangle")
WORDS = ("a photo of", "the", "dog", "cat", "city", "at night", "red", "car", "on a table", "beach", "old", "man")
MTIME = 1_600_000_000  # fixed tar mtime: reproducible shards (and webdataset 0.2.111 needs an int, see DESIGN.md)


def shape_classes() -> list[str]:
    """Class names of the `shapes` data, in label order: "red circle", "red square", ..."""
    return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]


def draw_shape(colour: str, shape: str, size: int, rng: random.Random) -> Image.Image:
    grey = rng.randint(90, 170)
    image = Image.new("RGB", (size, size), (grey, grey, grey))
    r = rng.uniform(0.22, 0.38) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    draw, fill = ImageDraw.Draw(image), COLOURS[colour]
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image


def shapes_sample(index: int, size: int, rng: random.Random) -> tuple[Image.Image, str, int]:
    label = rng.randrange(len(shape_classes()))
    colour, shape = shape_classes()[label].split()
    return draw_shape(colour, shape, size, rng), f"a {colour} {shape}", label


def noise_sample(index: int, size: int, rng: random.Random) -> tuple[Image.Image, str, int]:
    # smooth colour field + pixel noise: JPEG sizes like photos (256 px at q90: ~17 KB); pure noise is 5x larger
    gen = np.random.default_rng(rng.getrandbits(32))
    field = Image.fromarray(gen.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    pixels = (np.asarray(field, dtype=np.int16) + gen.normal(0, 6, (size, size, 3)).astype(np.int16)).clip(0, 255)
    return Image.fromarray(pixels.astype(np.uint8)), caption_of(rng), -1


def caption_of(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))


def write_shards(out: str | Path, kind: str = "shapes", shards: int = 4, per_shard: int = 100, image_size: int = 64,
                 seed: int = 0, quality: int = 90, processes: int = 1) -> list[str]:
    """Write `shards` tars of `per_shard` samples (in parallel with `processes`); returns their paths."""
    if kind not in ("shapes", "noise"):
        raise ValueError(f"kind must be 'shapes' or 'noise', not {kind!r}")
    Path(out).mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), shard, kind, per_shard, image_size, seed, quality) for shard in range(shards)]
    if processes > 1:
        with multiprocessing.Pool(processes) as pool:
            return pool.starmap(write_shard, jobs)
    return [write_shard(*job) for job in jobs]


def write_shard(out: str, shard: int, kind: str, per_shard: int, image_size: int, seed: int, quality: int) -> str:
    """One shard; its own generator (seed, shard), so shards can be written in any order or in parallel."""
    make = {"shapes": shapes_sample, "noise": noise_sample}[kind]
    rng = random.Random(f"{seed}/{shard}")
    samples = []
    for i in range(per_shard):
        image, caption, label = make(shard * per_shard + i, image_size, rng)
        samples.append((f"{shard:05d}{i:04d}", image, caption, {"label": label}))
    return write_tar(Path(out) / f"{shard:05d}.tar", samples, quality)


def write_tar(path: Path, samples, quality: int = 90) -> str:
    """(key, PIL image, caption, extra metadata) -> one img2dataset-layout tar, plus its `_stats.json`."""
    count = 0
    with wds.TarWriter(str(path), mtime=MTIME) as sink:
        for key, image, caption, extra in samples:
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=quality)
            meta = {"key": key, "uid": hashlib.blake2b(f"{key}\x1f{caption}".encode(), digest_size=16).hexdigest(),
                    "caption": caption, **extra}
            sink.write({"__key__": key, "jpg": buf.getvalue(), "txt": caption, "json": json.dumps(meta)})
            count += 1
    path.with_name(path.name[: -len(".tar")] + "_stats.json").write_text(json.dumps({"count": count, "successes": count}))
    return str(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--kind", choices=("shapes", "noise"), default="shapes")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args(argv)
    setup_logging()
    paths = write_shards(args.out, args.kind, args.shards, args.per_shard, args.image_size, args.seed,
                         processes=args.processes)
    log.info("wrote %d shards of %d samples to %s", len(paths), args.per_shard, args.out)


if __name__ == "__main__":
    main()
