"""Benchmarks of the decision service (run from the repository root, e.g. ``python -m
benchmarks.rank``)."""
