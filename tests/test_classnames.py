"""The shipped class-name lists (pipeline/common/classnames/): published names and templates, taken by the readers."""

from __future__ import annotations

import json

import pytest

from pipeline.common.evalsets import SHIPPED_LISTS, load_classnames, open_eval_set, shipped_list
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
