"""Evaluation-set readers shared by `dedup` (stage 5) and `overlap` (its report).

An eval set is a list of labelled images plus class names (and optionally prompt templates). Three
layouts are read, each yielding `(image_id, label, encoded image bytes)` in a fixed order:

- ImageFolder (torchvision's convention): `<root>/<class>/*.jpg|png|...`; labels are the sorted class
  folders' indices, `image_id` is the path relative to root (`cat/0001.jpg`), as `train.zeroshot` names it.
- WebDataset eval shards as CLIP_benchmark stores its sets: a `.tar`/`.tgz`/`.tar.gz` file, a folder of
  them, or a brace pattern; per sample `KEY.{jpg,jpeg,png,webp}` + `KEY.cls` (integer label); `image_id`
  is KEY.
- MNIST-style CSV (`.csv` or `.csv.gz`, e.g. the `mnist_5k.csv.gz` of `make sample-data`): one row per image,
  784 pixel values (28x28, 0..255) then the label, no header; `image_id` is `row<i>` (as `train.zeroshot`).
  The pixels are encoded to PNG so every reader hands out the same thing.

Class names (and templates) come from `--classnames NAME=FILE|a,b,c|LIST` (LIST: a shipped list of published
names and templates, `cifar10`, `cifar100` or `imagenet`, in pipeline/common/classnames/), else from a side
file found next to the set: `classnames.{json,yaml,yml,txt}` inside a folder set (or `classnames.txt` one level
up, CLIP_benchmark's layout `ROOT/test/*.tar` + `ROOT/classnames.txt`), or `<stem>.classnames.{...}` /
`classnames.{...}` beside a file set. JSON/YAML hold a list of names or `{"classnames": [...],
"templates": [...]}`; TXT holds one name per line, with templates from CLIP_benchmark's
`zeroshot_classification_templates.txt` beside it. An ImageFolder without a side file uses its folder
names (the convention says they are the class names). A set with no images, an unreadable layout, or a
CSV/WebDataset set without class names raises `EvalSetError` with one line saying what to fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from pipeline.common import files, rawtar
from pipeline.common.images import image_member

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
TAR_SUFFIXES = (".tar", ".tgz", ".tar.gz")
CSV_SUFFIXES = (".csv", ".csv.gz")
CLASSNAME_SUFFIXES = (".json", ".yaml", ".yml", ".txt")
MNIST_SIDE = 28  # MNIST images are 28x28 grey (LeCun et al. 1998)
# The class names and templates of published zero-shot results, as JSON with their source (cifar10, cifar100,
# imagenet): `--classnames cifar10` names one of these.
SHIPPED_LISTS = Path(__file__).resolve().parent / "classnames"
CLIP_BENCHMARK_TEMPLATES = "zeroshot_classification_templates.txt"   # beside its classnames.txt


class EvalSetError(ValueError):
    """An eval set cannot be used as given; the message says which set and what to fix."""


@dataclasses.dataclass(frozen=True)
class EvalSet:
    name: str
    path: str
    layout: str                    # "imagefolder" | "webdataset" | "csv"
    classnames: tuple[str, ...]
    templates: tuple[str, ...] = ()


def parse_eval_spec(spec: str) -> tuple[str, str]:
    """'NAME=PATH' -> (name, path); EvalSetError if either side is empty."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise EvalSetError(f"--eval {spec!r}: expected NAME=PATH, e.g. cifar10=data/cifar10/test")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise EvalSetError(f"--eval {spec!r}: NAME may hold letters, digits, '_', '.' and '-' only")
    return name, path


def layout_of(path: str) -> str:
    """Which reader a path needs, from its shape; EvalSetError if none fits or it does not exist."""
    if path.endswith(CSV_SUFFIXES):
        return "csv"
    if path.endswith(TAR_SUFFIXES) or "{" in path:
        return "webdataset"
    if files.isdir(path):
        return "webdataset" if any(p.endswith(TAR_SUFFIXES) for p in files.entries(path)[1]) else "imagefolder"
    raise EvalSetError(f"{path}: no such eval set (expected a class-folder directory, .tar/.tgz shards or a .csv(.gz))")


def classname_candidates(path: str) -> list[str]:
    """Side files that may hold a set's class names, most specific first."""
    p = (path.split("{")[0] if "{" in path else path).rstrip("/") or "."
    if files.isdir(p):
        # CLIP_benchmark's WebDataset sets keep classnames.txt one level above their split folders (test/*.tar)
        return [files.join(p, f"classnames{s}") for s in CLASSNAME_SUFFIXES] + \
               [files.join(files.parent(p), "classnames.txt")]
    stem, folder = files.name(p), files.parent(p)
    for suffix in TAR_SUFFIXES + CSV_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return [files.join(folder, f"{stem}.classnames{s}") for s in CLASSNAME_SUFFIXES] + \
           [files.join(folder, f"classnames{s}") for s in CLASSNAME_SUFFIXES]


def shipped_list(name: str) -> str | None:
    """The path of a shipped class-name list (`cifar10`, `cifar100`, `imagenet`), None for any other value."""
    path = SHIPPED_LISTS / f"{name}.json"
    return str(path) if name.isidentifier() and path.is_file() else None


def load_classnames(path: str) -> tuple[list[str], list[str]]:
    """(class names, templates) from a JSON/YAML/TXT file; EvalSetError if missing or malformed."""
    if not files.isfile(path):
        raise EvalSetError(f"class-name file {path} not found")
    text = read_text(path)
    if path.endswith(".txt"):
        # CLIP_benchmark's layout: the templates, one per line, in a file beside classnames.txt
        templates = files.join(files.parent(path), CLIP_BENCHMARK_TEMPLATES)
        return [line.strip() for line in text.splitlines() if line.strip()], \
            [line.strip() for line in read_text(templates).splitlines() if line.strip()] \
            if files.isfile(templates) else []
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise EvalSetError(f"{path}: not valid {Path(path).suffix[1:].upper()}: {e}") from None
    if isinstance(data, dict):
        names, templates = data.get("classnames"), data.get("templates", [])
    else:
        names, templates = data, []
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise EvalSetError(f"{path}: expected a list of class names or {{\"classnames\": [...], \"templates\": [...]}}")
    return names, list(templates or [])


def resolve_classnames(path: str, layout: str, given: str | None) -> tuple[list[str], list[str]]:
    """Class names from the flag (file or comma list), else a side file, else ImageFolder folder names."""
    if given:
        given = shipped_list(given) or given
        if files.isfile(given) or "," not in given:
            return load_classnames(given)
        return [n.strip() for n in given.split(",")], []
    for candidate in classname_candidates(path):
        if files.isfile(candidate):
            return load_classnames(candidate)
    if layout == "imagefolder":
        return [c.replace("_", " ") for c in imagefolder_classes(path)], []
    raise EvalSetError(f"{path}: no class-name file (looked for {', '.join(classname_candidates(path)[:2])}, ...); "
                       "write one or pass --classnames NAME=FILE|a,b,c")


def open_eval_set(name: str, path: str, classnames: str | None = None) -> EvalSet:
    """Describe an eval set: its layout and class names (the images are read lazily by `iter_eval_images`)."""
    layout = layout_of(path)
    names, templates = resolve_classnames(path, layout, classnames)
    return EvalSet(name=name, path=path, layout=layout, classnames=tuple(names), templates=tuple(templates))


def read_text(path: str) -> str:
    with files.open_file(path, "r", encoding="utf-8") as f:
        return f.read()


def imagefolder_classes(root: str) -> list[str]:
    return files.entries(root)[0]


def iter_imagefolder(root: str) -> Iterator[tuple[str, int, bytes]]:
    for label, cls in enumerate(imagefolder_classes(root)):
        for name in files.entries(files.join(root, cls))[1]:
            if name.lower().endswith(IMAGE_SUFFIXES):
                with files.open_file(files.join(root, cls, name)) as f:
                    yield f"{cls}/{name}", label, f.read()


def tar_paths(path: str) -> list[str]:
    """The tar files of a WebDataset eval set (one file, a folder, a glob or a brace pattern); EvalSetError if none."""
    try:
        return files.expand(path, TAR_SUFFIXES)
    except files.NoFilesError as e:
        raise EvalSetError(f"eval set {e}") from None


def iter_webdataset(path: str) -> Iterator[tuple[str, int, bytes]]:
    for tar_path in tar_paths(path):
        compression = "gzip" if tar_path.endswith((".tgz", ".gz")) else None
        try:
            with files.open_file(tar_path, "rb", compression=compression) as f:
                samples = [(key, {rawtar.extension(m): m.data for m in members})
                           for key, members in rawtar.group_by_key(rawtar.iter_members(f))]
        except (OSError, tarfile.TarError, EOFError) as e:
            raise EvalSetError(f"{tar_path}: unreadable eval shard: {e}") from None
        for key, sample in samples:
            image = image_member(sample)
            if image is None or "cls" not in sample:
                continue  # not an image sample (e.g. a __meta__ entry)
            try:
                label = int(sample["cls"].decode().strip())
            except (UnicodeDecodeError, ValueError):
                raise EvalSetError(f"{tar_path}: sample {key}: .cls is not an integer label") from None
            yield key, label, image


def iter_csv(path: str) -> Iterator[tuple[str, int, bytes]]:
    with files.open_file(path, "rt", compression="gzip" if path.endswith(".gz") else None) as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                values = np.array(line.split(","), dtype=np.float32)
            except ValueError:
                raise EvalSetError(f"{path}:{i + 1}: not numbers (expected 784 pixels then the label)") from None
            if values.size != MNIST_SIDE * MNIST_SIDE + 1:
                raise EvalSetError(f"{path}:{i + 1}: {values.size} columns, expected 785 (784 pixels then the label)")
            pixels = values[:-1].clip(0, 255).astype(np.uint8).reshape(MNIST_SIDE, MNIST_SIDE)
            buf = io.BytesIO()
            Image.fromarray(pixels, "L").save(buf, "PNG")
            yield f"row{i}", int(values[-1]), buf.getvalue()


READERS = {"imagefolder": iter_imagefolder, "webdataset": iter_webdataset, "csv": iter_csv}


def iter_eval_images(eval_set: EvalSet) -> Iterator[tuple[str, int, bytes]]:
    """(image_id, label, image bytes) for every image of the set; EvalSetError if empty or a label has no name."""
    n = 0
    for image_id, label, data in READERS[eval_set.layout](eval_set.path):
        if not 0 <= label < len(eval_set.classnames):
            raise EvalSetError(f"{eval_set.name}: image {image_id} has label {label}, but there are "
                               f"{len(eval_set.classnames)} class names")
        n += 1
        yield image_id, label, data
    if n == 0:
        raise EvalSetError(f"{eval_set.name}: no images in {eval_set.path}")


def eval_set_signature(eval_set: EvalSet) -> str:
    """A short digest of the set's files (paths, sizes, mtimes): the key of its hash cache."""
    if eval_set.layout == "imagefolder":
        paths = files.find(files.join(eval_set.path, "**"))
    else:
        paths = tar_paths(eval_set.path) if eval_set.layout == "webdataset" else [eval_set.path]
    digest = hashlib.blake2b(digest_size=8)
    for f in paths:
        digest.update(f"{f}\x1f{files.version(f)}\n".encode())
    return digest.hexdigest()


def open_eval_sets(specs: list[str], classnames: list[str]) -> list[EvalSet]:
    """EvalSets from NAME=PATH flags; EvalSetError on a bad spec, a duplicate name or missing class names."""
    names = dict(parse_eval_spec(c) for c in classnames)
    sets, seen = [], set()
    for spec in specs:
        name, path = parse_eval_spec(spec)
        if name in seen:
            raise EvalSetError(f"eval set name {name!r} given twice")
        seen.add(name)
        sets.append(open_eval_set(name, path, names.get(name)))
    unknown = set(names) - seen
    if unknown:
        raise EvalSetError(f"--classnames for unknown eval set(s): {', '.join(sorted(unknown))}")
    return sets
