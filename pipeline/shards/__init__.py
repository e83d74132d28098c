"""Stage 4, `shards`: balanced pairs downloaded into WebDataset shards with img2dataset (stage.py), through
the fetch policy of netguard.

The stage's public names are reachable here: `from pipeline import shards; shards.run(...)`. They are looked up
on first use, not at import, so that `python -m pipeline.shards` (__main__.py) sets up img2dataset's
environment before the stage imports it."""

import importlib


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(importlib.import_module("pipeline.shards.stage"), name)
