"""`python -m pipeline.shards`: run the stage."""

import sys

from pipeline.shards.stage import main

main(sys.argv[1:])
