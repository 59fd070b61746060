"""Benchmarks: run with ``python -m benchmarks.run`` (see docs/development.md); figures go to RESULTS.md."""
