"""`python -m pipeline.queries`: run the stage."""

import sys

from pipeline.queries.stage import main

main(sys.argv[1:])
