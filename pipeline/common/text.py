"""Whole-token text semantics shared by the `queries` and `match` stages.

MetaCLIP (Xu et al. 2023, `substr_matching.py`) decides that entry `e` occurs in text `t` when
`" " + e + " "` is a substring of `spacing(t)`, where `spacing` pads the text with one space on each
side, wraps the characters `, . ; : ? ! `` ` `` in spaces and turns tabs and newlines into spaces. Matching
is case-sensitive. We keep exactly that, with two documented refinements:

- whitespace runs collapse to one space (MetaCLIP's raw `spacing` keeps "new  york" with two spaces,
  so the entry "new york" silently misses it; collapsing loses no true match);
- entries go through the same function as texts, so an entry with punctuation ("St. Louis") is spaced
  the same way as the caption it has to be found in ("St . Louis") instead of never matching.

Because stage 1 counts words with `tokenize` and stage 2 matches with `spaced`, a query is always a
sequence of whole tokens that the matcher can find: the two stages cannot disagree. (Stage 1 runs a C
twin of `tokenize` and of `is_query_token` on ASCII tokens, pipeline/queries/_wikicore.c; tests/test_wikicore.py
holds it to these definitions.)
"""

from __future__ import annotations

import re

PUNCT_TO_WRAP = (",", ".", ";", ":", "?", "!", "`")  # MetaCLIP substr_matching.spacing
CHARS_TO_SPACE = ("\t", "\n", "\r")

# A token that may become a query: starts and ends with a letter or digit, and inside only letters,
# digits and the joiners that occur inside real words (don't, e-mail, AT&T, C++ is left out on purpose:
# '+' runs are mostly markup). At least one letter. Tokens such as "(born", "|", "px]]" never qualify.
_QUERY_TOKEN = re.compile(r"^[^\W_](?:(?:[^\W_]|['’\-&])*[^\W_])?$")
_HAS_LETTER = re.compile(r"[^\W\d_]")


def tokenize(text: str) -> list[str]:
    """The whole tokens of `text` under MetaCLIP's semantics (punctuation marks are tokens)."""
    for punct in PUNCT_TO_WRAP:
        if punct in text:
            text = text.replace(punct, f" {punct} ")
    return text.split()  # str.split() already splits on tabs, newlines and carriage returns


def spacing(text: str) -> str:
    """MetaCLIP's spacing with whitespace runs collapsed: 'New York, 1990' -> ' New York , 1990 '."""
    return " " + " ".join(tokenize(text)) + " "


def is_query_token(token: str) -> bool:
    """True for a token that can stand in the query list (a word, not punctuation or markup)."""
    return bool(_QUERY_TOKEN.match(token)) and bool(_HAS_LETTER.search(token))


def normalize_entry(entry: str) -> str:
    """An entry as the matcher sees it: tokens joined by single spaces ('St. Louis' -> 'St . Louis')."""
    return " ".join(tokenize(entry))
