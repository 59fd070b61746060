"""The project's plan: the stale rule fed with what only this project knows.

Two inputs Dagster's records cannot give: each map's current prompt version (from the
settings), and which outputs are gone or damaged on disk (``qwen_assets.pipeline.integrity``). The
headless build, the sensor and the schedule all plan through ``project_plan``.
"""

from __future__ import annotations

from collections.abc import Mapping

from dagster import AssetKey, DagsterInstance, Definitions

from qwen_assets.defs.partitions import MapGrid
from qwen_assets.orchestration.sources import source_versions
from qwen_assets.orchestration.stale import StalePlan, Target, stale_plan
from qwen_assets.pipeline.integrity import damaged_outputs
from qwen_assets.settings import Settings


def output_damage(settings: Settings) -> dict[Target, str]:
    """Outputs gone or damaged on disk, as the stale rule's targets."""
    grid = MapGrid(settings)
    damage = damaged_outputs(settings, {key: grid.split(key) for key in grid.keys})
    return {(AssetKey(name), partition): why for (name, partition), why in damage.items()}


def project_plan(
    defs: Definitions,
    instance: DagsterInstance,
    settings: Settings,
    forced: Mapping[Target, str] | None = None,
) -> StalePlan:
    """What is stale now; ``forced``: targets a person asked to rebuild (``--force``)."""
    outputs = {**output_damage(settings), **(forced or {})}
    return stale_plan(defs, instance, source_versions(settings), outputs)
