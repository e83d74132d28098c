"""`python -m pipeline.shards`: run the stage."""

import os
import sys

# Before img2dataset (imported by the stage) imports albumentations, which would check PyPI for updates.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pipeline.shards.stage import main  # noqa: E402

main(sys.argv[1:])
