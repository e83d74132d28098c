"""The demo's small world: a candidate pool of real images with captions, and a held-out eval set.

In:  `data/sample/` (`make sample-data`): 5,000 real MNIST digits (`mnist_5k.csv.gz`) and real photos.
Out: `<out>/www/` the files a loopback HTTP server serves, `<out>/pool.parquet` the candidate pool
     (`URL`, `TEXT`, LAION's column names), `<out>/eval/mnist/<class>/*.png` the held-out eval set (an
     ImageFolder, every fifth digit: training never sees them), `<out>/manifest.json` (what is in the pool).

How the pool is made, so that every filter of every stage has something to do:
- digits: every digit not held out, as a PNG, with a caption written from its label in one of several
  phrasings that name the digit as a word ("the digit seven, written by hand"): the words are WordNet
  lemmas, so they are queries, and "digit" / "number" / "handwritten" are head entries that the
  balancing cap visibly cuts;
- photos: the sample photos with captions written by hand for each (what the picture shows);
- planted duplicates: a few held-out eval digits, upscaled and JPEG-recompressed (what the web does to an
  image), with ordinary captions: the dedup stage must find and remove exactly these;
- rows that must be rejected: empty, missing or huge captions, non-http URLs, a duplicate URL, gibberish
  that matches no query, non-English captions, and URLs on which the demo server misbehaves (404, 500,
  slow, redirect loop, HTML body, truncated JPEG, decompression bomb, `X-Robots-Tag: noai`).
Everything is a deterministic function of the sample files and `--seed`.

Run: python -m demo.world --sample data/sample --out work/demo/world --port 8765
"""

from __future__ import annotations

import argparse
import io
import random
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.common import manifest
from pipeline.common.evalsets import iter_eval_images, open_eval_set

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PHRASINGS = ("the digit {w}, written by hand", "a handwritten {w} on a black background",
             "number {w} in white ink", "a photo of the number {w}", "handwritten digit: {w}",
             "a scanned {w} from a postal code", "the number {w}, drawn with a thick pen")
PHOTO_CAPTIONS = {
    "astronaut.png": "an astronaut in a white space suit in front of the flag",
    "chelsea.png": "a tabby cat looking up at the camera",
    "coffee.png": "a cup of coffee on a saucer, seen from above",
    "rocket.jpg": "a rocket standing on the launch pad",
    "hubble_deep_field.jpg": "galaxies in deep space photographed by the Hubble telescope",
    "retina.jpg": "a photograph of the retina of a human eye",
    "ihc.png": "a microscope image of stained tissue",
    "china.jpg": "a temple among trees in China",
    "flower.jpg": "a red flower in bloom, close up",
}
HOLD_OUT_EVERY = 5   # rows 0, 5, 10, ... are the eval set (100 per digit; the CSV is sorted by label)
PLANTED = 12         # held-out digits planted in the pool after resize + recompression (at most)
MISBEHAVING = ("/missing.jpg", "/error.jpg", "/slow.jpg", "/loop", "/page.jpg", "/truncated.jpg",
               "/bomb.png", "/noai.jpg")   # routes of the demo server (demo.imageserver)


def digit_caption(label: int, rng: random.Random) -> str:
    return rng.choice(PHRASINGS).format(w=WORDS[label])


def web_copy(png: bytes) -> bytes:
    """What the web does to an image: upscaled 2x, recompressed as a JPEG of quality 60."""
    img = Image.open(io.BytesIO(png)).convert("RGB")
    img = img.resize((img.width * 2, img.height * 2), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=60)
    return buf.getvalue()


def reject_rows(base: str) -> list[tuple[str | None, str | None]]:
    """(url, caption) rows that some stage must reject, each for a reason the README names."""
    ok = f"{base}/files/chelsea.png"
    rows = [(f"{base}/files/empty.png", ""), (f"{base}/files/none.png", None),
            (f"{base}/files/long.png", "a digit " * 300),
            ("ftp://127.0.0.1/files/seven.png", "the digit seven, written by hand"),
            ("not a url", "a handwritten seven"), (None, "a handwritten seven"),
            (ok, "a cat"),  # duplicate URL of a photo row: one of the two is kept
            (f"{base}/files/gibberish.png", "zxqv blorf wugs plimmed"),
            (f"{base}/files/de.png", "die Katze sitzt auf dem Sofa und schläft den ganzen Tag"),
            (f"{base}/files/fr.png", "une photo de la tour Eiffel la nuit, avec des lumières")]
    rows += [(f"{base}{route}", f"a handwritten digit from the {route.strip('/').split('.')[0]} page")
             for route in MISBEHAVING]
    return rows


def build(sample: Path, out: Path, port: int, seed: int = 0) -> dict:
    started = time.time()
    base, rng = f"http://127.0.0.1:{port}", random.Random(seed)
    www, eval_root = out / "www" / "files", out / "eval" / "mnist"
    www.mkdir(parents=True, exist_ok=True)
    digits = open_eval_set("mnist", str(sample / "mnist_5k.csv.gz"), ",".join(WORDS))
    rows: list[tuple[str | None, str | None]] = []
    held_out: list[tuple[str, int, bytes]] = []
    for i, (image_id, label, png) in enumerate(iter_eval_images(digits)):
        if i % HOLD_OUT_EVERY == 0:
            held_out.append((image_id, label, png))
            (eval_root / WORDS[label]).mkdir(parents=True, exist_ok=True)
            (eval_root / WORDS[label] / f"{image_id}.png").write_bytes(png)
            continue
        (www / f"{image_id}.png").write_bytes(png)
        rows.append((f"{base}/files/{image_id}.png", digit_caption(label, rng)))
    planted = sorted(rng.sample(held_out, min(PLANTED, len(held_out))))
    for image_id, label, png in planted:
        (www / f"web-{image_id}.jpg").write_bytes(web_copy(png))
        # "envelope" is a tail entry (only these captions have it), so balancing keeps every planted copy
        rows.append((f"{base}/files/web-{image_id}.jpg", f"a handwritten {WORDS[label]} on an envelope"))
    for name, caption in PHOTO_CAPTIONS.items():
        if not (sample / "photos" / name).exists():
            continue
        (www / name).write_bytes((sample / "photos" / name).read_bytes())
        rows.append((f"{base}/files/{name}", caption))
    rows += reject_rows(base)
    rng.shuffle(rows)
    table = pa.table({"URL": pa.array([r[0] for r in rows], pa.string()),
                      "TEXT": pa.array([r[1] for r in rows], pa.string())})
    pq.write_table(table, out / "pool.parquet")
    counters = {"read": len(rows), "kept": len(rows), "rejected": {}}
    return manifest.write_manifest(
        str(out), stage="demo-world", settings={"port": port, "seed": seed, "sample": str(sample)},
        inputs=[manifest.file_info(str(sample / "mnist_5k.csv.gz"))], counters=counters,
        wall_time_s=time.time() - started,
        extra={"pool_rows": len(rows), "eval_images": len(held_out), "planted_duplicates": [f"{WORDS[label]}/{i}.png" for i, label, _ in planted],
               "rows_meant_to_be_rejected": len(reject_rows(base)), "server_base": base})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m demo.world", description=__doc__.split("\n\n")[0])
    p.add_argument("--sample", type=Path, default=Path("data/sample"))
    p.add_argument("--out", type=Path, default=Path("work/demo/world"))
    p.add_argument("--port", type=int, default=8765, help="loopback port the demo server will listen on")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not (args.sample / "mnist_5k.csv.gz").exists():
        raise SystemExit(f"demo: {args.sample}/mnist_5k.csv.gz not found: run `make sample-data`")
    m = build(args.sample, args.out, args.port, args.seed)
    print(f"demo world: {m['pool_rows']:,} pool rows ({m['rows_meant_to_be_rejected']} meant to be rejected, "
          f"{len(m['planted_duplicates'])} planted eval duplicates) -> {args.out}/pool.parquet; "
          f"eval set: {m['eval_images']:,} held-out digits in {args.out}/eval/mnist")


if __name__ == "__main__":
    main()
