"""The shipped class-name lists (pipeline/common/classnames/): published names and templates, taken by the readers."""

from __future__ import annotations

import json
import tarfile

import pytest

from pipeline.common.evalsets import SHIPPED_LISTS, iter_eval_images, load_classnames, open_eval_set, shipped_list
from tests.evalfixtures import add_member, jpeg_bytes, pattern_image
from train.zeroshot import template_set


@pytest.mark.parametrize("name, n_classes, first, last, n_templates", [
    ("cifar10", 10, "airplane", "truck", 18),           # CLIP data/prompts.md: 18 templates for CIFAR
    ("cifar100", 100, "apple", "worm", 18),
    ("imagenet", 1000, "tench", "toilet paper", 80),    # the 80 templates of CLIP's ImageNet notebook
])
def test_shipped_lists_hold_the_published_names_and_templates(name, n_classes, first, last, n_templates):
    data = json.loads((SHIPPED_LISTS / f"{name}.json").read_text(encoding="utf-8"))
    assert "github.com/openai/CLIP" in data["source"]
    names, templates = load_classnames(shipped_list(name))
    assert (len(names), names[0], names[-1], len(templates)) == (n_classes, first, last, n_templates)
    assert all(t.count("{}") == 1 for t in templates)
    assert template_set(name) == (name, templates)


def test_imagenet_list_keeps_openais_two_repeated_names():
    names, _ = load_classnames(shipped_list("imagenet"))
    # OpenAI's list calls ILSVRC classes 657 and 744 both "missile", 836 and 837 both "sunglasses"
    assert [i for i, n in enumerate(names) if n in ("missile", "sunglasses")] == [657, 744, 836, 837]
    assert len(set(names)) == 998
    assert names[:3] == ["tench", "goldfish", "great white shark"]


def test_readers_take_a_shipped_list_by_name(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "set" / cls).mkdir(parents=True)
    eval_set = open_eval_set("c10", str(tmp_path / "set"), "cifar10")
    assert eval_set.classnames[:2] == ("airplane", "automobile") and len(eval_set.templates) == 18
    assert shipped_list("cifar10") and shipped_list("../cifar10") is None and shipped_list("mnist") is None


def test_clip_benchmark_webdataset_layout_gives_names_and_templates(tmp_path):
    # CLIP_benchmark's wds sets: ROOT/test/{0..n}.tar + nshards.txt, ROOT/classnames.txt and
    # ROOT/zeroshot_classification_templates.txt (clip_benchmark/datasets/builder.py, build_wds_dataset)
    (tmp_path / "test").mkdir()
    with tarfile.open(tmp_path / "test" / "0.tar", "w") as tar:      # plain tar, as CLIP_benchmark's
        add_member(tar, "s0.jpg", jpeg_bytes(pattern_image(1)))
        add_member(tar, "s0.cls", b"1")
    (tmp_path / "test" / "nshards.txt").write_text("1\n")
    (tmp_path / "classnames.txt").write_text("cat\ndog\n")
    (tmp_path / "zeroshot_classification_templates.txt").write_text("a photo of a {}.\na drawing of a {}.\n")
    eval_set = open_eval_set("pets", str(tmp_path / "test"))
    assert (eval_set.layout, eval_set.classnames) == ("webdataset", ("cat", "dog"))
    assert eval_set.templates == ("a photo of a {}.", "a drawing of a {}.")
    assert [(i, y) for i, y, _ in iter_eval_images(eval_set)] == [("s0", 1)]
