"""Stage 2, `match`: the candidate pool's captions that contain a query (stage.py), with the pool reader (pool)
and the language filter (lid).

The stage's public names are re-exported here: `from pipeline import match; match.run(...)`."""

from pipeline.match.stage import *  # noqa: F401,F403
