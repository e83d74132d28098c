"""`python -m pipeline.match`: run the stage."""

from pipeline.match.stage import main

main()
