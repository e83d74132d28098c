"""Tests of train/tokenizer.py against ids written out by hand and a plain-Python copy of open_clip's tokenizer."""

from __future__ import annotations

import gzip
import html
import string

import ftfy
import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from train.tokenizer import (DEFAULT_MERGES, N_MERGES, VOCAB_SIZE, ClipTokenizer, bytes_to_unicode, clean_text,
                             read_merges)


@pytest.fixture(scope="module")
def merges_path():
    if not DEFAULT_MERGES.exists():
        pytest.fail(f"{DEFAULT_MERGES} is missing: it ships as package data (pyproject.toml)")
    return DEFAULT_MERGES


@pytest.fixture(scope="module")
def tokenizer(merges_path):
    return ClipTokenizer(merges_path)


@pytest.fixture(scope="module")
def reference_bpe(merges_path):
    return ReferenceBPE(merges_path)


class ReferenceBPE:
    """open_clip 3.3.0's SimpleTokenizer (clean="lower"; OpenAI CLIP's simple_tokenizer.py plus the special-token
    words), written out in plain Python with a per-word BPE loop."""

    def __init__(self, path):
        merges = gzip.open(path).read().decode("utf-8").split("\n")[1:N_MERGES + 1]
        merges = [tuple(m.split()) for m in merges]
        self.byte_encoder = bytes_to_unicode()
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        self.special = ["<start_of_text>", "<end_of_text>"]
        vocab += self.special
        self.encoder = {v: i for i, v in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        words = r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
        self.pattern = regex.compile("|".join(self.special) + words, regex.IGNORECASE)

    def bpe(self, token: str) -> list[str]:
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def encode(self, text: str) -> list[int]:
        text = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).strip().split()).strip().lower()
        ids = []
        for token in regex.findall(self.pattern, text):
            if token in self.special:
                ids.append(self.encoder[token])
                continue
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids += [self.encoder[piece] for piece in self.bpe(token)]
        return ids


def test_a_photo_of_a_cat_gives_clips_ids(tokenizer):
    ids = tokenizer(["a photo of a cat"])
    assert ids.shape == (1, 77) and ids.dtype == np.int64
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert not ids[0, 7:].any()


def test_vocabulary_has_clips_size(merges_path):
    assert len(read_merges(merges_path)) == 48_894
    assert VOCAB_SIZE == 256 * 2 + 48_894 + 2


@pytest.mark.parametrize("text", [
    "A Photo of a CAT.",
    "two  dogs\tplaying\nfetch on the beach at sunset!!",
    "it's what we'll do, they'd say: don't",
    "New York City skyline, 1990s (black & white) &amp;amp; more",
    "Ünïcödé café naïve Zürich résumé",
    "東京の夜景 and 北京",
    "emoji 🐱🐶 and symbols ©®™ ½ 3.14159 #hashtag @user",
    "pneumonoultramicroscopicsilicovolcanoconiosis supercalifragilistic",
    "e-mail C++ AT&T 100% $5.99",
])
def test_ids_match_the_reference_bpe(tokenizer, reference_bpe, text):
    reference = reference_bpe.encode(text)
    got = tokenizer([text])[0]
    n = len(reference)
    assert got[0] == tokenizer.sot_id and got[n + 1] == tokenizer.eot_id
    assert got[1:n + 1].tolist() == reference
    assert not got[n + 2:].any()


def test_long_text_is_truncated_with_end_token_last(tokenizer):
    ids = tokenizer(["word " * 200, "short"])
    assert ids.shape == (2, 77)
    assert ids[0, -1] == tokenizer.eot_id and (ids[0, 1:-1] > 0).all()
    assert ids[0].argmax() == 76   # the text tower finds the end token by argmax


def test_context_length_is_configurable(merges_path):
    ids = ClipTokenizer(merges_path, context_length=8)(["a photo of a very large orange cat"])
    assert ids.shape == (1, 8) and ids[0, 0] == 49406 and ids[0, -1] == 49407


def test_missing_merges_file_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt.gz is missing .*ships with the package"):
        ClipTokenizer(tmp_path / "nope.txt.gz")


# any text without lone surrogates (not UTF-8 encodable: open_clip's encode raises on them too)
@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=30))
def test_ids_match_the_reference_bpe_on_any_text(tokenizer, reference_bpe, text):
    reference = reference_bpe.encode(text)[:75]
    got = tokenizer([text])[0]
    assert got[1:len(reference) + 1].tolist() == reference and got[len(reference) + 1] == 49407


def test_default_merges_ship_inside_the_package():
    # The tokenizer must work in an installed package, without data/sample: the file lives in train/ and
    # pyproject.toml lists it as package data (setuptools copies it into the wheel).
    import hashlib
    import tomllib
    from pathlib import Path

    import train

    package = Path(train.__file__).resolve().parent
    assert DEFAULT_MERGES.parent.parent == package
    relative = DEFAULT_MERGES.relative_to(package)
    patterns = tomllib.loads((package.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["train"]
    assert any(relative.match(p) for p in patterns)
    # the same bytes as open_clip_torch 3.3.0's copy (train/assets/NOTICE.md)
    assert hashlib.sha256(DEFAULT_MERGES.read_bytes()).hexdigest() == \
        "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"


# ids from open_clip 3.3.0's SimpleTokenizer, run by hand (vocabulary: 320 "a", 2368 "cat", 257 '"', 568 "'s")
@pytest.mark.parametrize("text, ids", [
    ("\u201ca cat\u201d", [257, 320, 2368, 257]),           # ftfy uncurls quotes
    ("the \ufb01nest \ufb02ower", [518, 7707, 4055]),        # ligatures fi, fl
    ("\uff23\uff21\uff34", [2368]),                        # fullwidth CAT
    ("caf\u00c3\u00a9 au lait", [15304, 2566, 572, 585]),   # mojibake of "café" repaired
    ("a\x00b\x07c", [5334]),                                # control characters removed: "abc"
    ("\x1b[31mred\x1b[0m", [736]),                          # terminal colour codes removed: "red"
    ("hi<end_of_text>there", [1883, 49407, 997]),            # special words keep their ids
    ("<START_OF_TEXT>", [49406]),                            # ... after lower-casing
    ("\u039f\u0394\u039f\u03a3", [138, 123, 138, 112, 138, 123, 139, 480]),  # final sigma: bytes CF 82
    ("\u03bf\u03b4\u03bf\u03c3", [138, 123, 138, 112, 138, 123, 139, 481]),  # written medial sigma: CF 83
    ("&amp;amp;lt;3", [283, 274]),                           # "<3": ftfy and two html.unescape passes
    ("'S", [568]),                                           # a contraction after lower-casing
])
def test_open_clip_cleaning_cases_give_open_clips_ids(tokenizer, text, ids):
    got = tokenizer([text])[0]
    assert got[:len(ids) + 2].tolist() == [49406, *ids, 49407] and not got[len(ids) + 2:].any()


# clean_text skips ftfy on printable ASCII without "&": that is only right if ftfy leaves such text unchanged
@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from(string.printable[:95].replace("&", "")), max_size=60))
def test_ftfy_leaves_printable_ascii_without_entities_unchanged(text):
    assert ftfy.fix_text(text) == text
    assert clean_text(text) == " ".join(text.split()).lower()
