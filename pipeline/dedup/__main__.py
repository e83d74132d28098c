"""`python -m pipeline.dedup`: run the stage."""

from pipeline.dedup.stage import main

main()
