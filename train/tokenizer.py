"""CLIP's byte-pair-encoding tokenizer, with fast batch encoding.

Stage: `train` (captions -> token ids) and `zeroshot` (prompts -> token ids).
In: CLIP's merges file `bpe_simple_vocab_16e6.txt.gz` (OpenAI CLIP, MIT), shipped with this package in
`train/assets/` as open_clip ships it (source and licence: train/assets/NOTICE.md). Out: int64 arrays of shape (n, context_length),
`<|startoftext|> ids... <|endoftext|>` then zeros, truncated as open_clip's `tokenize` does (the last
kept position becomes `<|endoftext|>`, so the text tower can always find it by argmax).

The vocabulary is built exactly as CLIP's `SimpleTokenizer` builds it: 256 byte symbols, the same
with the end-of-word marker `</w>`, one token per merge in rank order (48,894 merges), then the two
special tokens: 49,408 ids. The text is cleaned as CLIP cleans it (HTML entities unescaped twice,
whitespace runs collapsed, lower-cased) and split with CLIP's pattern; the BPE itself runs in the
Rust `tokenizers` library (the same construction as transformers' `CLIPConverter`), which encodes a
batch of captions in one call. CLIP also runs `ftfy.fix_text`; we leave it out (it repairs mojibake,
which the `match` stage's caption normalisation already rejects or repairs upstream), NFC
normalisation is kept. tests/test_train_tokenizer.py checks the ids against a plain-Python copy of
CLIP's BPE.
"""

from __future__ import annotations

import gzip
import html
import re
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

DEFAULT_MERGES = Path(__file__).resolve().parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"   # package data
VOCAB_SIZE = 49_408        # CLIP: 49,152 BPE tokens + 256 byte tokens, as the paper's vocabulary
CONTEXT_LENGTH = 77        # CLIP: "max sequence length was capped at 76" + start token
N_MERGES = 49_152 - 256 - 2  # CLIP SimpleTokenizer: merges[1 : 49152 - 256 - 2 + 1]
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
# the Unicode White_Space property, which is what `\s` means in the `regex` module CLIP uses (Python's `re`
# would also take the separators \x1c-\x1f, which CLIP keeps as symbols inside a caption)
_WHITESPACE = re.compile("[\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")
# CLIP's SimpleTokenizer pattern: contractions, letter runs, single digits, runs of other non-space
# characters. Without its two special-token alternatives: a caption that literally contains
# "<|endoftext|>" is text here, where CLIP would insert a real end token (and cut the caption there).
SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 bytes to printable unicode characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def read_merges(path: str | Path = DEFAULT_MERGES) -> list[tuple[str, str]]:
    """The ranked merges of CLIP's BPE file (first line is a version header)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CLIP BPE merges file {path} is missing (the default, {DEFAULT_MERGES.name}, "
                                "ships with the package: leave --merges / data.merges unset to use it)")
    lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
    return [tuple(line.split()) for line in lines[1:N_MERGES + 1]]


def clip_vocab(merges: list[tuple[str, str]]) -> list[str]:
    """Id -> token, in CLIP's order (so ids match OpenAI's and open_clip's)."""
    symbols = list(bytes_to_unicode().values())
    return symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]


def clean_text(text: str) -> str:
    """CLIP's basic_clean (without ftfy) then whitespace_clean, in the same order: HTML entities unescaped
    twice ("&amp;amp;" occurs in alt-text), str.strip(), Unicode White_Space runs to one space, strip again."""
    return _WHITESPACE.sub(" ", html.unescape(html.unescape(text)).strip()).strip()


class ClipTokenizer:
    """Batch encoder: `tok(["a photo of a cat"])` -> int64 array (1, context_length)."""

    def __init__(self, merges_path: str | Path = DEFAULT_MERGES, context_length: int = CONTEXT_LENGTH):
        self.merges_path, self.context_length = str(merges_path), context_length
        merges = read_merges(merges_path)
        vocab = {token: i for i, token in enumerate(clip_vocab(merges))}
        assert len(vocab) == VOCAB_SIZE, len(vocab)
        self.sot_id, self.eot_id = vocab[SOT], vocab[EOT]
        bpe = Tokenizer(BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
                            fuse_unk=False, unk_token=None, dropout=None))
        bpe.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
        # invert=True + "removed": keep the pattern's matches, drop what lies between (whitespace)
        bpe.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        bpe.decoder = decoders.ByteLevel()
        # sot + at most context_length - 2 ids + eot, as open_clip's tokenize truncates
        bpe.enable_truncation(max_length=context_length - 2)
        self._bpe = bpe

    def __call__(self, texts: list[str]) -> np.ndarray:
        encodings = self._bpe.encode_batch([clean_text(t) for t in texts], add_special_tokens=False)
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, enc in zip(out, encodings):
            n = len(enc.ids)
            row[0], row[1:n + 1], row[n + 1] = self.sot_id, enc.ids, self.eot_id
        return out

    def decode(self, ids) -> str:
        """Token ids (without padding or special tokens) back to text, for logs and debugging."""
        keep = [int(i) for i in ids if int(i) not in (0, self.sot_id, self.eot_id)]
        return self._bpe.decode(keep).replace("</w>", " ").strip()

    # Rust objects pickle, but rebuilding from the path keeps DataLoader worker start-up small and portable.
    def __reduce__(self):
        return (ClipTokenizer, (self.merges_path, self.context_length))
