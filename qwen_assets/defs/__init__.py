"""The Dagster definitions: the assets of each pipeline stage, their resources, partitions
and checks, and the one job. Each asset is thin and calls the plain functions of
``qwen_assets.pipeline``; what to rebuild and when is ``qwen_assets.orchestration``, above.
The modules here define factories (the definitions depend on the settings); a module added
with definitions at its top level (``dg scaffold defs``) is loaded beside them."""
# No `from __future__ import annotations` here: Dagster reads the context type hints at runtime.
