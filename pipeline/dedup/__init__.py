"""Stage 5, `dedup`: training samples that are near-duplicates of eval images removed (stage.py), with
perceptual hashes (phash), their multi-index search (mih) and the optional embedding signal (embed).

The stage's public names are re-exported here: `from pipeline import dedup; dedup.run(...)`."""

from pipeline.dedup.stage import *  # noqa: F401,F403
