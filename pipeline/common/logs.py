"""The one logging set-up of every command line: the stages, the trainer, the demo scripts and the benchmarks."""

from __future__ import annotations

import logging

OWN_LOGGERS = ("pipeline", "train", "demo", "bench", "__main__")   # `python -m pipeline.x` logs as __main__
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    """Warnings from libraries, `level` and up from our own loggers, one line each on stderr.

    Importing Beam installs a plain StreamHandler on the root logger, which would make basicConfig a no-op;
    that one is replaced. Handlers of other kinds (pytest's capture) are kept, so tests still see the records.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    logging.basicConfig(level=logging.WARNING, format=FORMAT, datefmt="%H:%M:%S")
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)
