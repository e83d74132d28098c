"""The C core of the per-row work of `match` and `balance` (pipeline/common/_matchcore.c), loaded in one place.

`core` is the extension module, or None where it could not be built (no C compiler at install time): then every
caller runs the Python twin of each function (`match.check_rows_py`, `match.hit_columns_py`,
`records.uids_of_py`, `beamio.buckets_of_py`, `balance.head_only_draws_py`), which define them and give the same
results, slower; this module says so once per process, whichever stage imports it first.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

try:
    from pipeline.common import _matchcore as core
except ImportError as error:
    core = None
    log.warning("pipeline.common._matchcore is not built (%s): match and balance run its Python twins (same results, "
                "slower); pip install -e . with a C compiler builds it", error)
