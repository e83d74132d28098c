"""CLIP's byte-pair-encoding tokenizer, identical to open_clip's, with fast batch encoding.

Stage: `train` (captions -> token ids) and `zeroshot` (prompts -> token ids).
In: CLIP's merges file `bpe_simple_vocab_16e6.txt.gz` (OpenAI CLIP, MIT), shipped with this package in
`train/assets/` as open_clip ships it (source and licence: train/assets/NOTICE.md). Out: int64 arrays of
shape (n, context_length), `<start_of_text> ids... <end_of_text>` then zeros, truncated as open_clip's
`tokenize` does (the last kept position becomes `<end_of_text>`, so the text tower can always find it by argmax).

The same ids as open_clip 3.3.0's `SimpleTokenizer` (clean="lower") on any string, by following its steps:
`ftfy.fix_text` (curly quotes, ligatures, width forms, mojibake, control characters; NFC), HTML entities
unescaped twice, `str.split()` whitespace runs to one space, Python's `str.lower()` (which knows the Greek
final sigma), then its split pattern, run by the same `regex` module with the same flags, in which
`<start_of_text>` and `<end_of_text>` are words of their own and get the special ids. The vocabulary is
CLIP's: 256 byte symbols, the same with the end-of-word marker `</w>`, one token per merge in rank order
(48,894 merges), then the two special tokens: 49,408 ids. Only the BPE of the split words runs in the Rust
`tokenizers` library (the construction of transformers' `CLIPConverter`), one call per batch.
tests/test_train_tokenizer.py checks ids written out by hand and a plain-Python copy of CLIP's BPE.
"""

from __future__ import annotations

import gzip
import html
from pathlib import Path

import ftfy
import numpy as np
import regex
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE

DEFAULT_MERGES = Path(__file__).resolve().parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"   # package data
VOCAB_SIZE = 49_408        # CLIP: 49,152 BPE tokens + 256 byte tokens, as the paper's vocabulary
CONTEXT_LENGTH = 77        # CLIP: "max sequence length was capped at 76" + start token
N_MERGES = 49_152 - 256 - 2  # CLIP SimpleTokenizer: merges[1 : 49152 - 256 - 2 + 1]
SOT, EOT = "<start_of_text>", "<end_of_text>"   # open_clip's names (OpenAI's "<|startoftext|>"): ids 49406, 49407
# open_clip's SimpleTokenizer pattern: the special tokens, contractions, letter runs, single digits, runs of
# other non-space characters; IGNORECASE as theirs (it matters: "'S" or "'ſ" after lower-casing are contractions)
SPLIT = regex.compile(f"{SOT}|{EOT}" + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                      regex.IGNORECASE)


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
    """open_clip's `_clean_lower` in its order: ftfy, HTML entities unescaped twice ("&amp;amp;" occurs in
    alt-text), strip, `str.split()` whitespace runs to one space, `str.lower()`."""
    # ftfy leaves printable ASCII without entities as it is (tested); skipping it there halves the time
    if not (text.isascii() and text.isprintable() and "&" not in text):
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.strip().split()).lower()


def split_words(text: str) -> list[str]:
    """The words BPE runs on, after cleaning; `<start_of_text>`/`<end_of_text>` come out as words of their own."""
    return SPLIT.findall(clean_text(text))


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
        # words arrive split (`split_words`); ByteLevel maps each word's UTF-8 bytes to CLIP's byte symbols
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        bpe.decoder = decoders.ByteLevel()
        # a word that is `<start_of_text>`/`<end_of_text>` gets its id, as open_clip's BPE cache gives it
        bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (SOT, EOT)])
        # sot + at most context_length - 2 ids + eot, as open_clip's tokenize truncates
        bpe.enable_truncation(max_length=context_length - 2)
        self._bpe = bpe

    def __call__(self, texts: list[str]) -> np.ndarray:
        encodings = self._bpe.encode_batch([split_words(t) for t in texts], is_pretokenized=True,
                                           add_special_tokens=False)
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
