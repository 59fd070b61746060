"""Benchmarks: run with ``python -m benchmarks.run`` (see README); figures go to RESULTS.md."""
