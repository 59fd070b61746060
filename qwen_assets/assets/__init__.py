"""The Dagster assets, one module per stage; each is thin and calls the stage's functions."""
# No `from __future__ import annotations` here: Dagster reads the context type hints at runtime.
