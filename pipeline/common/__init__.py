"""What several stages and the trainer share: records and the query list, text normalisation, manifests, Beam
and parquet I/O, file listing, tar reading, eval sets, image decoding, download failure reasons, and the shared C
core (matchcore, _matchcore.c: uids, buckets, balance's draws, match's row checks). Imports no stage."""
