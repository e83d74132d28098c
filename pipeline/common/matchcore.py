"""The C core of the per-row work of `match` (pipeline/common/_matchcore.c), loaded in one place.

`core` is the extension module, or None where it could not be built (no C compiler at install time): then the
stage runs the Python twin of each function (`match.check_rows_py`, `match.hit_columns_py`), which define them
and give the same results, slower; this module says so once per process.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

try:
    from pipeline.common import _matchcore as core
except ImportError as error:
    core = None
    log.warning("pipeline.common._matchcore is not built (%s): match runs its Python twins (same results, slower); "
                "pip install -e . with a C compiler builds it", error)
