"""The maps as Dagster partitions: one per task, or with variants one per variant x task.

A project without a ``[variants]`` section keeps one partition per task, named after it (as
before variants existed, so its history stays current). With variants the partitions are a
``MultiPartitionsDefinition`` (dimensions ``task`` and ``variant``), which the UI shows as a
grid: editing a variant's model makes its row stale, editing an instruction its column.
"""

from __future__ import annotations

import warnings
from functools import cached_property

from dagster import (
    BetaWarning,
    DimensionPartitionMapping,
    MultiPartitionKey,
    MultiPartitionMapping,
    MultiPartitionsDefinition,
    PartitionMapping,
    PartitionsDefinition,
    StaticPartitionMapping,
    StaticPartitionsDefinition,
)

from qwen_assets.pipeline.embedding.identity import task_version
from qwen_assets.settings import Settings


def _one_to_all(names: list[str], reference: str) -> StaticPartitionMapping:
    """Each name reads itself; the reference is read by every name too."""
    return StaticPartitionMapping({name: names if name == reference else [name] for name in names})


class MapGrid:
    """Which maps (variant, task) the project has, and the partition key of each."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.variants = settings.variant_names
        self.tasks = settings.prompt_names  # each task, its paraphrases and controls
        self.gridded = bool(settings.variants)
        self._keys = {
            self.key(variant, task): (variant, task)
            for variant in self.variants
            for task in self.tasks
        }

    @cached_property
    def partitions_def(self) -> PartitionsDefinition:
        tasks = StaticPartitionsDefinition(self.tasks)
        if not self.gridded:
            return tasks
        return MultiPartitionsDefinition(
            {"task": tasks, "variant": StaticPartitionsDefinition(self.variants)}
        )

    def key(self, variant: str, task: str) -> str:
        if not self.gridded:
            return task
        return str(MultiPartitionKey({"task": task, "variant": variant}))

    def split(self, key: str) -> tuple[str, str]:
        """(variant, task) of a partition key."""
        return self._keys[str(key)]

    @property
    def keys(self) -> list[str]:
        """Every map's key, variant by variant, tasks in the settings' order."""
        return list(self._keys)

    @property
    def reference(self) -> tuple[str, str]:
        """The map every other is aligned onto: the reference variant's ``umap.align_to``."""
        return self.settings.reference_variant, self.settings.umap.align_to

    def projection_mapping(self) -> PartitionMapping:
        """A map reads its own vectors and, for the alignment, the reference map's. With
        variants, Dagster maps each dimension on its own, so a map also lists its task under
        the reference variant and the reference task under its variant: neither changes
        without one of the two it reads changing too."""
        variant, task = self.reference
        tasks = _one_to_all(self.tasks, task)
        if not self.gridded:
            return tasks
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=BetaWarning)
            return MultiPartitionMapping(
                {
                    "task": DimensionPartitionMapping("task", tasks),
                    "variant": DimensionPartitionMapping(
                        "variant", _one_to_all(self.variants, variant)
                    ),
                }
            )

    def prompt_version(self, key: str) -> str:
        """Changes exactly when the vectors of the map ``key`` would."""
        variant, task = self.split(key)
        return task_version(self.settings, task, variant)

    def label(self, key: str) -> str:
        """How people read a map's name: ``task``, or ``variant/task`` with variants."""
        variant, task = self.split(key)
        return f"{variant}/{task}" if self.gridded else task
