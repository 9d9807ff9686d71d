"""Benchmarks of the bento-ingest CLI against the plain Databento SDK; run `python -m bench`."""
