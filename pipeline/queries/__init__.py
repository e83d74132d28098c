"""Stage 1, `queries`: Wikipedia word counts -> the query list (stage.py), with the dump reader (wikidump),
the markup stripper (wikitext) and its C core (wikicore, _wikicore.c).

The stage's public names are re-exported here: `from pipeline import queries; queries.run(...)`."""

from pipeline.queries.stage import *  # noqa: F401,F403
