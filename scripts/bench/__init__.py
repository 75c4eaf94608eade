"""Benchmarks that write a results file (see results/README.md). Run each from the repository root
as a module, e.g. ``python -m scripts.bench.quality --help``; the code they share is ``common.py``."""
