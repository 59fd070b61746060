"""Each map's prompt version, as the stale rule and the UI see it.

A map's embeddings record the prompt version they were built with (see ``stale``); the
settings give the current one. Recording a changed version as an observation of the
``task_instructions`` source lets the UI's lineage show which partition an edit made stale.
"""

from __future__ import annotations

from dagster import AssetKey, AssetObservation, AssetRecordsFilter, DagsterInstance

from qwen_assets.dagster_internals import DATA_VERSION_TAG
from qwen_assets.defs.partitions import MapGrid
from qwen_assets.orchestration.stale import Target
from qwen_assets.settings import Settings

INSTRUCTIONS = AssetKey("task_instructions")


def instruction_versions(settings: Settings) -> dict[Target, str]:
    """The current version of each map's prompt: what its embeddings must have been built with."""
    grid = MapGrid(settings)
    return {(INSTRUCTIONS, key): grid.prompt_version(key) for key in grid.keys}


def changed_instruction_observations(
    instance: DagsterInstance, settings: Settings
) -> list[AssetObservation]:
    """Observations for the maps whose prompt differs from the last one recorded, so the UI's
    lineage shows which map's embeddings an edit made stale."""
    grid = MapGrid(settings)
    observations = []
    for key in grid.keys:
        records = instance.fetch_observations(
            AssetRecordsFilter(asset_key=INSTRUCTIONS, asset_partitions=[key]), limit=1
        ).records
        observation = records[0].asset_observation if records else None
        recorded = (observation.tags or {}).get(DATA_VERSION_TAG) if observation else None
        version = grid.prompt_version(key)
        if recorded != version:
            task = grid.split(key)[1]
            observations.append(
                AssetObservation(
                    INSTRUCTIONS,
                    partition=key,
                    tags={DATA_VERSION_TAG: version},
                    metadata={"instruction": settings.tasks[task].instruction or "(none)"},
                )
            )
    return observations


def record_instruction_versions(instance: DagsterInstance, settings: Settings) -> list[str]:
    """Record changed prompts now; returns the labels of the maps whose prompt changed."""
    grid = MapGrid(settings)
    observations = changed_instruction_observations(instance, settings)
    for observation in observations:
        instance.report_runless_asset_event(observation)
    return [grid.label(str(observation.partition)) for observation in observations]
