"""Each observed source's current version, as the stale rule and the UI see it: each map's
prompt, and the corpus file when the corpus is a user's own.

A map's embeddings record the prompt version they were built with, and raw_newsgroups the
corpus file's (see ``stale``); the settings and the file give the current ones. Recording a
changed version as an observation of its source (``task_instructions``, ``corpus_file``)
lets the UI's lineage show what an edit made stale.
"""

from __future__ import annotations

from dagster import AssetKey, AssetObservation, AssetRecordsFilter, DagsterInstance

from qwen_assets.dagster_internals import DATA_VERSION_TAG
from qwen_assets.defs.corpus_assets import CORPUS_FILE
from qwen_assets.defs.partitions import MapGrid
from qwen_assets.errors import CorpusError
from qwen_assets.orchestration.stale import Target
from qwen_assets.pipeline.corpus import corpus_file_version
from qwen_assets.settings import Settings

INSTRUCTIONS = AssetKey("task_instructions")
UNREADABLE = "unreadable"


def source_versions(settings: Settings) -> dict[Target, str]:
    """The current version of each observed source: each map's prompt (what its embeddings
    must have been built with), and the corpus file's content where the corpus is a file."""
    grid = MapGrid(settings)
    versions: dict[Target, str] = {
        (INSTRUCTIONS, key): grid.prompt_version(key) for key in grid.keys
    }
    if settings.corpus.from_file:
        versions[(CORPUS_FILE, None)] = str(corpus_version(settings))
    return versions


def corpus_version(settings: Settings) -> str | None:
    """The corpus file's version (None for the built-in corpus); a file that cannot be read
    is a version of its own, so the build that follows says what is wrong with it."""
    if not settings.corpus.from_file:
        return None
    try:
        return corpus_file_version(settings.corpus)
    except (CorpusError, OSError):
        return UNREADABLE


def _recorded(instance: DagsterInstance, key: AssetKey, partition: str | None) -> str | None:
    records = instance.fetch_observations(
        AssetRecordsFilter(
            asset_key=key, asset_partitions=[partition] if partition is not None else None
        ),
        limit=1,
    ).records
    observation = records[0].asset_observation if records else None
    return (observation.tags or {}).get(DATA_VERSION_TAG) if observation else None


def changed_instruction_observations(
    instance: DagsterInstance, settings: Settings
) -> list[AssetObservation]:
    """Observations for the maps whose prompt differs from the last one recorded, so the UI's
    lineage shows which map's embeddings an edit made stale."""
    grid = MapGrid(settings)
    observations = []
    for key in grid.keys:
        version = grid.prompt_version(key)
        if _recorded(instance, INSTRUCTIONS, key) != version:
            task = grid.split(key)[1]
            observations.append(
                AssetObservation(
                    INSTRUCTIONS,
                    partition=key,
                    tags={DATA_VERSION_TAG: version},
                    metadata={"instruction": settings.instruction_of(task) or "(none)"},
                )
            )
    return observations


def changed_source_observations(
    instance: DagsterInstance, settings: Settings
) -> list[AssetObservation]:
    """The changed prompts' observations, and the corpus file's when its content changed."""
    observations = changed_instruction_observations(instance, settings)
    version = corpus_version(settings)
    if version is not None and _recorded(instance, CORPUS_FILE, None) != version:
        observations.append(
            AssetObservation(
                CORPUS_FILE,
                tags={DATA_VERSION_TAG: version},
                metadata={"source": settings.corpus.source},
            )
        )
    return observations


def record_source_versions(instance: DagsterInstance, settings: Settings) -> list[str]:
    """Record changed sources now; returns the labels of the maps whose prompt changed."""
    grid = MapGrid(settings)
    observations = changed_source_observations(instance, settings)
    for observation in observations:
        instance.report_runless_asset_event(observation)
    return [
        grid.label(str(observation.partition))
        for observation in observations
        if observation.asset_key == INSTRUCTIONS
    ]
