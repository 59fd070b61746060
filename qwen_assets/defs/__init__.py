"""Everything Dagster: the assets of each pipeline stage, the resources, the triggers, run
bookkeeping and the headless build. Each asset is thin and calls the plain functions in the
modules one level up (``corpus``, ``embedding``, ``projection``, ``site``, ``storage``)."""
# No `from __future__ import annotations` here: Dagster reads the context type hints at runtime.
