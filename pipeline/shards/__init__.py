"""Stage 4, `shards`: balanced pairs downloaded into WebDataset shards with img2dataset (stage.py), through
the fetch policy of netguard.

The stage's public names are re-exported here: `from pipeline import shards; shards.run(...)`."""

from pipeline.shards.stage import *  # noqa: F401,F403
