"""The demo's world builder on a tiny sample folder made in the test."""

import gzip
import json

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from demo import world as demo


def tiny_sample(tmp_path, rows=30):
    sample = tmp_path / "sample"
    (sample / "photos").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = [",".join(map(str, list(rng.integers(0, 256, 784)) + [i % 10])) for i in range(rows)]
    with gzip.open(sample / "mnist_5k.csv.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    Image.new("RGB", (40, 30), "red").save(sample / "photos" / "flower.jpg")
    return sample


def test_world_has_pool_eval_set_planted_copies_and_rejects(tmp_path):
    m = demo.build(tiny_sample(tmp_path), tmp_path / "world", port=8765)
    pool = pq.read_table(tmp_path / "world" / "pool.parquet").to_pylist()
    held_out = 30 // demo.HOLD_OUT_EVERY
    assert m["eval_images"] == held_out == len(list((tmp_path / "world" / "eval" / "mnist").rglob("*.png")))
    assert len(m["planted_duplicates"]) == held_out   # fewer eval images than PLANTED: all are planted
    planted_rows = [r for r in pool if r["URL"] and "/files/web-row" in r["URL"]]
    assert len(planted_rows) == held_out and all("envelope" in r["TEXT"] for r in planted_rows)
    assert len(pool) == 24 + held_out + 1 + len(demo.reject_rows("http://127.0.0.1:8765"))
    assert all(r["URL"] is None or "127.0.0.1:8765" in r["URL"] or not r["URL"].startswith("http")
               for r in pool)
    served = {p.name for p in (tmp_path / "world" / "www" / "files").iterdir()}
    assert "flower.jpg" in served and "row1.png" in served and "row0.png" not in served   # row 0 is held out
    assert json.loads((tmp_path / "world" / "manifest.json").read_text())["pool_rows"] == len(pool)


def test_world_is_deterministic(tmp_path):
    sample = tiny_sample(tmp_path)
    demo.build(sample, tmp_path / "a", port=8765)
    demo.build(sample, tmp_path / "b", port=8765)
    assert (tmp_path / "a" / "pool.parquet").read_bytes() == (tmp_path / "b" / "pool.parquet").read_bytes()
