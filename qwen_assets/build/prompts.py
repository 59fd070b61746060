"""Each task's prompt version, as the stale rule and the UI see it.

A task's embeddings record the prompt version they were built with (see ``stale``); the
settings give the current one. Recording a changed version as an observation of the
``task_instructions`` source lets the UI's lineage show which partition an edit made stale.
"""

from __future__ import annotations

from dagster import AssetKey, AssetObservation, AssetRecordsFilter, DagsterInstance

from qwen_assets.build.stale import DATA_VERSION_TAG, Target
from qwen_assets.settings import Settings

INSTRUCTIONS = AssetKey("task_instructions")


def instruction_versions(settings: Settings) -> dict[Target, str]:
    """The current version of each task's prompt: what its embeddings must have been built with."""
    return {(INSTRUCTIONS, task): settings.task_version(task) for task in settings.task_names}


def changed_instruction_observations(
    instance: DagsterInstance, settings: Settings
) -> list[AssetObservation]:
    """Observations for the tasks whose prompt differs from the last one recorded, so the UI's
    lineage shows which task's embeddings an edit made stale."""
    observations = []
    for task in settings.task_names:
        records = instance.fetch_observations(
            AssetRecordsFilter(asset_key=INSTRUCTIONS, asset_partitions=[task]), limit=1
        ).records
        observation = records[0].asset_observation if records else None
        recorded = (observation.tags or {}).get(DATA_VERSION_TAG) if observation else None
        if recorded != settings.task_version(task):
            observations.append(
                AssetObservation(
                    INSTRUCTIONS,
                    partition=task,
                    tags={DATA_VERSION_TAG: settings.task_version(task)},
                    metadata={"instruction": settings.tasks[task].instruction or "(none)"},
                )
            )
    return observations


def record_instruction_versions(instance: DagsterInstance, settings: Settings) -> list[str]:
    """Record changed prompts now; returns the tasks whose prompt changed."""
    observations = changed_instruction_observations(instance, settings)
    for observation in observations:
        instance.report_runless_asset_event(observation)
    return [str(observation.partition) for observation in observations]
