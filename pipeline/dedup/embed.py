"""Image embeddings for `dedup` (stage 5): the optional second signal, cosine similarity from our own encoder.

pHash misses copies whose geometry changed (borders, crops: BENCHMARKS.md, section dedup); an image encoder
trained by the `train` stage sees through some of them. The encoder is the image tower of any checkpoint
train/weights.py reads (ours, open_clip's, OpenAI's; `--embed-model` gives the architecture where the file has
none), loaded as zero-shot evaluation loads it, with the same eval preprocessing (open_clip's:
`pipeline.common.images.eval_image`) and the same normalised features (`zeroshot.encode_arrays`): dedup sees an
image as zero-shot does.

In:  a checkpoint path; shard files and eval sets (the same inputs as `pipeline/dedup/phash.py`).
Out: float32 L2-normalised features, (n, embed_dim), per shard sample key or eval image id; images that do
     not decode get no row (the pHash side already counts them as unreadable).
Search: faiss `IndexFlatIP` over the eval side (exact: inner product of unit vectors = cosine), range search
     for cosine >= threshold (`cosine_pairs`).
Cache: like the hashes, one parquet per shard (`<cache>/embed/shards/`) and per eval set (`<cache>/embed/eval/`),
     keyed by the input file signature, `EMBED_VERSION` and the checkpoint's content hash (sha256) with its model
     config, so a retrained checkpoint never reads another one's features.
Runs in this process, shard by shard: torch already spreads one batch over the cores (intra-op threads), and
     a worker pool would load one model copy per worker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tarfile
from collections.abc import Iterable

import faiss
import numpy as np
import pyarrow as pa

from pipeline.common import files, rawtar
from pipeline.common.evalsets import EvalSet, eval_set_signature, iter_eval_images
from pipeline.common.images import image_member
from pipeline.dedup.phash import batched, file_signature, read_or_compute

log = logging.getLogger(__name__)

# bump when the preprocessing changes: invalidates every embedding cache file
# (2: open_clip's eval preprocessing, no draft decode, RGB conversion after resizing)
EMBED_VERSION = 2
BATCH = 256            # images per forward pass (zeroshot.encode_images' default)


class CheckpointError(ValueError):
    """The --embed-checkpoint file is missing, unreadable, or does not fit its model architecture."""


@dataclasses.dataclass(frozen=True)
class Encoder:
    """The image tower of a checkpoint, with what decides its features' cache key."""
    model: object          # train.model.CLIP (torch is imported only when the signal is on)
    image_size: int
    dim: int
    sha256: str            # the checkpoint file's content hash (the manifest's)
    key: str               # the cache key: the file's hash and the model config it was loaded with
    path: str
    device: str


def file_sha256(path: str) -> str:
    """The checkpoint's content hash: part of every embedding cache key and of the manifest."""
    with files.open_file(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_encoder(path: str, device: str = "auto", model: str | None = None) -> Encoder:
    """The image encoder of a checkpoint (`model`: the architecture where the file carries none, as --model of
    train.zeroshot); CheckpointError (one line) if it cannot be one."""
    import json

    import torch

    from train import config as config_lib
    from train.weights import WeightsError, load_model
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    try:
        encoder, weights = load_model(path, model, device)
    except WeightsError as e:
        raise CheckpointError(f"--embed-checkpoint {e}") from None
    sha256 = file_sha256(path)
    config = json.dumps(config_lib.to_dict(weights.model), sort_keys=True)
    key = hashlib.sha256(f"{sha256}\x1f{config}".encode()).hexdigest()
    return Encoder(model=encoder, image_size=weights.model.vision.image_size, dim=weights.model.embed_dim,
                   sha256=sha256, key=key, path=path, device=device)


def embed_images(encoder: Encoder, items: Iterable[tuple[str, bytes]]) -> tuple[list[str], np.ndarray]:
    """(ids, (n, dim) float32 unit features) of the (id, encoded image) items that decode; others are skipped."""
    from pipeline.common.images import DECODE_ERRORS, eval_image
    from train.zeroshot import encode_arrays
    ids, features = [], []
    for batch in batched(items, BATCH):
        arrays, batch_ids = [], []
        for item_id, data in batch:
            try:
                arrays.append(eval_image(data, encoder.image_size))
                batch_ids.append(item_id)
            except DECODE_ERRORS:
                continue
        if arrays:
            features.append(encode_arrays(encoder.model, arrays, encoder.device).numpy())
            ids += batch_ids
    return ids, np.concatenate(features) if features else np.zeros((0, encoder.dim), dtype=np.float32)


def features_table(id_column: str, ids: list[str], features: np.ndarray) -> pa.Table:
    """The cache file's table: one row per id, `embedding` a fixed-size list of float32."""
    flat = pa.array(np.ascontiguousarray(features, dtype=np.float32).ravel())
    return pa.table({id_column: pa.array(ids, pa.string()),
                     "embedding": pa.FixedSizeListArray.from_arrays(flat, features.shape[1])})


def table_features(table: pa.Table, dim: int) -> np.ndarray:
    """The (n, dim) float32 matrix of a features table's `embedding` column."""
    values = table["embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return values.astype(np.float32, copy=False).reshape(-1, dim)


def shard_images(path: str) -> Iterable[tuple[str, bytes]]:
    """(key, image bytes) of a shard's samples that have an image; stops quietly at a corrupt tail (the pHash
    pass already recorded the error, and only samples it hashed are ever matched)."""
    try:
        with files.open_file(path, "rb") as f:
            for key, members in rawtar.group_by_key(rawtar.iter_members(f)):
                sample = {rawtar.extension(m): m.data for m in members}
                data = image_member(sample)
                if data is not None:
                    yield key, data
    except (OSError, tarfile.TarError, EOFError) as e:   # what phash.hash_shard stops at, too
        log.warning("%s: embedding stopped at a corrupt member: %s", path, e)


def shard_features(path: str, encoder: Encoder, cache_dir: str) -> dict[str, np.ndarray]:
    """key -> unit feature of every decodable image of a shard, through the cache."""
    stem = files.name(path).split(".")[0]
    cache = files.join(cache_dir, "embed", "shards",
                         f"{stem}-{file_signature(path, 'embed', EMBED_VERSION, encoder.key)}.parquet")
    table, _ = read_or_compute(cache, lambda: (features_table("key", *embed_images(encoder, shard_images(path))), None))
    return dict(zip(table["key"].to_pylist(), table_features(table, encoder.dim)))


def eval_features(eval_set: EvalSet, encoder: Encoder, cache_dir: str) -> dict[str, np.ndarray]:
    """image_id -> unit feature of every decodable image of an eval set, through the cache."""
    cache = files.join(cache_dir, "embed", "eval", f"{eval_set.name}-{eval_set_signature(eval_set)}-"
                                                     f"{EMBED_VERSION}-{encoder.key[:16]}.parquet")

    def compute():
        items = ((image_id, data) for image_id, _, data in iter_eval_images(eval_set))
        return features_table("image_id", *embed_images(encoder, items)), None

    table, _ = read_or_compute(cache, compute)
    return dict(zip(table["image_id"].to_pylist(), table_features(table, encoder.dim)))


def stack(ids: list[str], features: dict[str, np.ndarray], dim: int) -> np.ndarray:
    """Features in the order of `ids`; an id without a feature gets the zero vector (cosine 0 to everything)."""
    out = np.zeros((len(ids), dim), dtype=np.float32)
    for i, item_id in enumerate(ids):
        if item_id in features:
            out[i] = features[item_id]
    return out


def build_cosine_index(features: np.ndarray) -> faiss.IndexFlatIP:
    """An exact inner-product index over unit features (inner product = cosine)."""
    index = faiss.IndexFlatIP(features.shape[1])
    index.add(np.ascontiguousarray(features, dtype=np.float32))
    return index


def cosine_pairs(index: faiss.IndexFlatIP, queries: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(query row, index row) of every pair with cosine >= threshold (exact search)."""
    if len(queries) == 0 or index.ntotal == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    # faiss keeps inner products strictly above the radius: step one float32 ulp down for ">="
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
    lims, sims, ids = index.range_search(np.ascontiguousarray(queries, dtype=np.float32), radius)
    rows = np.repeat(np.arange(len(queries)), np.diff(lims).astype(np.int64))
    keep = sims >= np.float32(threshold)
    return rows[keep], ids[keep].astype(np.int64)
