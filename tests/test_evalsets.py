"""Eval-set readers: the three layouts, class names, and bad sets as one clear error."""

from __future__ import annotations

import gzip
import io
import json

import pytest
from PIL import Image

from pipeline.common.evalsets import (
    EvalSetError,
    iter_eval_images,
    open_eval_set,
    parse_eval_spec,
)
from tests.evalfixtures import (
    jpeg_bytes,
    pattern_image,
    write_imagefolder,
    write_wds_eval,
)


def mnist_row(label: int, value: int = 0) -> str:
    return ",".join([str(value)] * 784 + [str(label)])


def test_imagefolder_ids_labels_and_folder_classnames(tmp_path):
    root = write_imagefolder(tmp_path / "pets", {"tabby_cat": [1, 2], "dog": [3]})
    s = open_eval_set("pets", str(root))
    assert (s.layout, s.classnames) == ("imagefolder", ("dog", "tabby cat"))      # sorted; '_' -> ' '
    items = list(iter_eval_images(s))
    assert [(i, label) for i, label, _ in items] == [("dog/0003.jpg", 0), ("tabby_cat/0001.jpg", 1),
                                                     ("tabby_cat/0002.jpg", 1)]
    assert items[0][2] == (root / "dog" / "0003.jpg").read_bytes()


def test_imagefolder_side_file_wins_and_carries_templates(tmp_path):
    root = write_imagefolder(tmp_path / "pets", {"a": [1], "b": [2]})
    (root / "classnames.json").write_text(json.dumps({"classnames": ["cat", "dog"], "templates": ["a photo of a {}."]}))
    s = open_eval_set("pets", str(root))
    assert s.classnames == ("cat", "dog") and s.templates == ("a photo of a {}.",)


def test_webdataset_eval_shards_with_cls_labels(tmp_path):
    path = write_wds_eval(tmp_path / "digits.tgz", [("000", 1, jpeg_bytes(pattern_image(1))),
                                                    ("001", 0, jpeg_bytes(pattern_image(2)))])
    (tmp_path / "digits.classnames.txt").write_text("zero\none\n")
    s = open_eval_set("digits", str(path))
    assert (s.layout, s.classnames) == ("webdataset", ("zero", "one"))
    assert [(i, label) for i, label, _ in iter_eval_images(s)] == [("000", 1), ("001", 0)]


def test_mnist_csv_gz_is_read_as_png_28x28(tmp_path):
    path = tmp_path / "mnist.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write(mnist_row(7, 255) + "\n" + mnist_row(2) + "\n")
    (tmp_path / "classnames.yaml").write_text("classnames: [zero, one, two, three, four, five, six, seven]\n")
    s = open_eval_set("mnist", str(path))
    items = list(iter_eval_images(s))
    assert [(i, label) for i, label, _ in items] == [("row0", 7), ("row1", 2)]
    image = Image.open(io.BytesIO(items[0][2]))
    assert (image.size, image.mode, image.getpixel((0, 0))) == ((28, 28), "L", 255)


def test_classnames_flag_as_a_list(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(mnist_row(1) + "\n")
    assert open_eval_set("d", str(path), "zero, one").classnames == ("zero", "one")


@pytest.mark.parametrize("setup, message", [
    (lambda p: (p / "empty").mkdir(), r"no images"),
    (lambda p: (p / "x.csv").write_text("1,2,3\n"), r"3 columns, expected 785"),
    (lambda p: (p / "x.csv").write_text("a,b\n"), r"not numbers"),
    (lambda p: (p / "x.tgz").write_bytes(b"garbage"), r"unreadable eval shard"),
])
def test_bad_sets_raise_one_clear_error(tmp_path, setup, message):
    setup(tmp_path)
    path = next(p for p in tmp_path.iterdir())
    with pytest.raises(EvalSetError, match=message):
        list(iter_eval_images(open_eval_set("x", str(path), "a,b")))


def test_missing_set_missing_classnames_and_bad_spec(tmp_path):
    with pytest.raises(EvalSetError, match="no such eval set"):
        open_eval_set("x", str(tmp_path / "nowhere"))
    (tmp_path / "d.csv").write_text(mnist_row(0) + "\n")
    with pytest.raises(EvalSetError, match="no class-name file"):
        open_eval_set("d", str(tmp_path / "d.csv"))
    with pytest.raises(EvalSetError, match="not found"):
        open_eval_set("d", str(tmp_path / "d.csv"), str(tmp_path / "names.json"))
    (tmp_path / "names.json").write_text("{not json")
    with pytest.raises(EvalSetError, match="not valid JSON"):
        open_eval_set("d", str(tmp_path / "d.csv"), str(tmp_path / "names.json"))
    with pytest.raises(EvalSetError, match="expected NAME=PATH"):
        parse_eval_spec("just-a-path")
