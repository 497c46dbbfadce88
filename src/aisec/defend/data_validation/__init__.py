"""Validating data you did not make (issue 15): reading data set files into records (`records`), a provenance
manifest with per-file and per-record content hashes (`manifest`), and the exact comparison of two snapshots of
a data set: records added, removed and changed, labels changed per record, classes that appeared or vanished,
schema changes (`snapshot_diff`)."""
