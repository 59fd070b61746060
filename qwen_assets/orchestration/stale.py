"""What must be rebuilt: the one rule that the sensor, the schedule and the headless build share.

An asset partition is stale when
- it was never materialized;
- its code version changed (each asset's code version is derived from the settings that
  shape it, so editing a UMAP setting changes the maps' code version); or
- one of its input partitions was rebuilt into different data since it was built, in any
  run (each input partition's data version now, against its data version just before this
  partition was built: a rebuild that produced the same data leaves its dependents fresh).
  A partition's data version is a hash of its rows where it records one
  (``PARTITION_VERSION_METADATA``): Dagster gives every partition of a multi-partition run
  the same data version, derived from the inputs, so it cannot tell a map rebuilt from a new
  instruction from the old one; or
- it was built from an observed source whose version has changed since: a task's embeddings
  record the prompt version they were built with, and the settings give the current one; or
- its blocking check failed when it was built: the partition records what the check found,
  and nothing after it is built on it until a rebuild passes (Dagster's blocking checks stop
  what follows within one run only).

Everything it reads comes from Dagster's records through the public API, and it writes
nothing, so a dry run is only a read. Why not Dagster's own machinery: Dagster has no public
stale-status call (dagster-io/dagster#19368), and its declarative automation conditions
are stateful (they need a cursor, and their first evaluation requests nothing), which a
one-shot build from a terminal cannot use.
"""

from __future__ import annotations

import graphlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    AssetSpec,
    DagsterInstance,
    Definitions,
    EventLogRecord,
    PartitionsDefinition,
)

from qwen_assets import dagster_internals
from qwen_assets.dagster_internals import (
    CODE_VERSION_TAG,
    DATA_VERSION_TAG,
    PARTITION_RANGE_END_TAG,
    PARTITION_RANGE_START_TAG,
)
from qwen_assets.defs.metadata import (
    FAILED_CHECK_METADATA,
    PARTITION_VERSION_METADATA,
    SOURCE_VERSION_METADATA,
)

Target = tuple[AssetKey, str | None]
SHOWN_CAUSES = 3  # inputs named in one reason; the rest are counted


def label(target: Target) -> str:
    key, partition = target
    return f"{key.to_user_string()}[{partition}]" if partition else key.to_user_string()


@dataclass(frozen=True)
class PlannedRun:
    """One run: some assets, for no partition, one partition, or a range of partitions (a
    single-run backfill, so the sample is read once and DuckDB is opened by one run). With
    variants a range is a box of the grid: some tasks of some variants."""

    keys: list[AssetKey]
    tasks: tuple[str, ...] = ()

    @property
    def partition_key(self) -> str | None:
        return self.tasks[0] if len(self.tasks) == 1 else None

    @property
    def tags(self) -> dict[str, str]:
        if len(self.tasks) < 2:
            return {}
        return {PARTITION_RANGE_START_TAG: self.tasks[0], PARTITION_RANGE_END_TAG: self.tasks[-1]}

    def describe(self) -> str:
        names = ", ".join(key.to_user_string() for key in self.keys)
        if not self.tasks:
            return names
        span = self.tasks[0] if len(self.tasks) == 1 else f"{self.tasks[0]}...{self.tasks[-1]}"
        return f"{names} [{span}]"


@dataclass
class StalePlan:
    """What to rebuild, in order: assets feeding the partitions, each partition's assets,
    then assets fed by them (the site)."""

    before: list[AssetKey] = field(default_factory=list)
    by_task: dict[str, list[AssetKey]] = field(default_factory=dict)
    after: list[AssetKey] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    partitions_def: PartitionsDefinition | None = None

    @property
    def empty(self) -> bool:
        return not (self.before or self.by_task or self.after)

    def runs(self) -> list[PlannedRun]:
        """The plan as runs, in order. Partitions needing the same assets share one run when
        together they are exactly a range of partitions (a box of the grid, with variants)."""
        runs = [PlannedRun(self.before)] if self.before else []
        groups = [(keys, [partition]) for partition, keys in self.by_task.items()]
        merged = True
        while merged:  # a column merges into a box, then boxes side by side into one
            merged = False
            joined: list[tuple[list[AssetKey], list[str]]] = []
            for keys, partitions in groups:
                if joined and joined[-1][0] == keys and self._is_range(joined[-1][1] + partitions):
                    joined[-1] = (keys, self._ordered(joined[-1][1] + partitions))
                    merged = True
                else:
                    joined.append((keys, partitions))
            groups = joined
        runs += [PlannedRun(keys, tuple(partitions)) for keys, partitions in groups]
        if self.after:
            runs.append(PlannedRun(self.after))
        return runs

    def _ordered(self, partitions: list[str]) -> list[str]:
        order = list(self.by_task) if self.partitions_def is None else self._all
        return sorted(partitions, key=order.index)

    @cached_property
    def _all(self) -> list[str]:
        return [str(key) for key in self.partitions_def.get_partition_keys()]  # type: ignore[union-attr]

    def _is_range(self, partitions: list[str]) -> bool:
        if self.partitions_def is None:
            return True
        ordered = self._ordered(partitions)
        spanned = dagster_internals.partition_keys_between(
            self.partitions_def, ordered[0], ordered[-1]
        )
        return set(spanned) == set(partitions)


@dataclass(frozen=True)
class _Node:
    spec: AssetSpec
    partitions: list[str | None]


class _Graph:
    """The materializable assets in dependency order, and which input partitions each
    partition reads, from the Definitions' public asset specs and partition mappings."""

    def __init__(self, defs: Definitions) -> None:
        specs = {spec.key: spec for spec in defs.resolve_all_asset_specs()}
        self.materializable: set[AssetKey] = set()
        # Keys a multi-asset computes together: a run must select all of them.
        self.together: dict[AssetKey, set[AssetKey]] = {}
        for key in specs:
            assets_def = dagster_internals.assets_def_of(defs, key)
            if not dagster_internals.materializable(assets_def):
                continue
            self.materializable.add(key)
            if not assets_def.can_subset:
                self.together[key] = set(assets_def.keys) - {key}
        self.specs = specs
        # Sorted in, so the order out (and every plan said from it) is the same each time.
        order = graphlib.TopologicalSorter(
            {key: sorted(dep.asset_key for dep in specs[key].deps) for key in sorted(specs)}
        ).static_order()
        self.nodes = [
            _Node(specs[key], self.partitions_of(key))
            for key in order
            if key in self.materializable
        ]

    def upstream_of(self, key: AssetKey) -> set[AssetKey]:
        """Every asset ``key`` is built from, directly or not."""
        found: set[AssetKey] = set()
        pending = [dep.asset_key for dep in self.specs[key].deps]
        while pending:
            parent = pending.pop()
            if parent not in found:
                found.add(parent)
                pending += [dep.asset_key for dep in self.specs[parent].deps]
        return found

    def partitions_of(self, key: AssetKey) -> list[str | None]:
        partitions_def = self.specs[key].partitions_def
        return (
            [str(key) for key in partitions_def.get_partition_keys()] if partitions_def else [None]
        )

    def inputs(self, node: _Node, partition: str | None) -> list[Target]:
        found: list[Target] = []
        for dep in node.spec.deps:
            upstream = self.specs[dep.asset_key].partitions_def
            downstream = node.spec.partitions_def
            if upstream is None:
                found.append((dep.asset_key, None))
            elif downstream is None or partition is None:
                found += [(dep.asset_key, str(key)) for key in upstream.get_partition_keys()]
            elif dep.partition_mapping is None:
                found.append((dep.asset_key, partition))
            else:
                mapped = dep.partition_mapping.get_upstream_mapped_partitions_result_for_partitions(
                    dagster_internals.partitions_subset(downstream, [partition]),
                    downstream,
                    upstream,
                )
                found += [
                    (dep.asset_key, str(key))
                    for key in sorted(mapped.partitions_subset.get_partition_keys())
                ]
        return found


class _Records:
    """Latest materializations, read once each."""

    def __init__(self, instance: DagsterInstance) -> None:
        self.instance = instance
        self._latest: dict[Target, EventLogRecord | None] = {}

    def latest(self, target: Target, before: int | None = None) -> EventLogRecord | None:
        if before is None and target in self._latest:
            return self._latest[target]
        key, partition = target
        records = self.instance.fetch_materializations(
            AssetRecordsFilter(
                asset_key=key,
                asset_partitions=[partition] if partition is not None else None,
                before_storage_id=before,
            ),
            limit=1,
        ).records
        record = records[0] if records else None
        if before is None:
            self._latest[target] = record
        return record


def _data_version(record: EventLogRecord | None) -> str | None:
    """The partition's own content hash where it records one, else Dagster's data version."""
    if record is None or record.asset_materialization is None:
        return None
    own = record.asset_materialization.metadata.get(PARTITION_VERSION_METADATA)
    if own is not None:
        return str(own.value)
    return (record.asset_materialization.tags or {}).get(DATA_VERSION_TAG)


def _why_stale(
    graph: _Graph,
    records: _Records,
    node: _Node,
    partition: str | None,
    source_versions: Mapping[Target, str],
) -> str | None:
    built = records.latest((node.spec.key, partition))
    if built is None or built.asset_materialization is None:
        return "never materialized"
    materialization = built.asset_materialization
    if (materialization.tags or {}).get(CODE_VERSION_TAG) != node.spec.code_version:
        return "new code version (its settings or code changed)"
    failed = materialization.metadata.get(FAILED_CHECK_METADATA)
    if failed is not None and failed.value:
        return f"its blocking check failed ({failed.value})"
    causes = []
    for target in graph.inputs(node, partition):
        if target[0] not in graph.materializable:
            current = source_versions.get(target)
            used = materialization.metadata.get(SOURCE_VERSION_METADATA)
            if current is not None and (used is None or used.value != current):
                causes.append(f"{label(target)} changed")
            continue
        latest = records.latest(target)
        if latest is None:
            causes.append(f"{label(target)} is missing")
        elif latest.storage_id > built.storage_id and _data_version(latest) != _data_version(
            records.latest(target, before=built.storage_id)
        ):
            causes.append(f"{label(target)} changed")
    if len(causes) > SHOWN_CAUSES:  # a new variant's whole row is missing: say how much
        causes = [*causes[:SHOWN_CAUSES], f"and {len(causes) - SHOWN_CAUSES} more"]
    return "; ".join(causes) or None


def _stale_targets(
    graph: _Graph,
    instance: DagsterInstance,
    source_versions: Mapping[Target, str],
    outputs: Mapping[Target, str] | None = None,
) -> dict[Target, str]:
    """Every stale asset partition, plus everything downstream of one (it will be stale once
    its input is rebuilt), with the reason. ``outputs``: partitions whose stored output is
    gone or damaged (or that a person asked to rebuild), with why; stale too."""
    records = _Records(instance)
    dependents: dict[Target, list[Target]] = {}
    reasons: dict[Target, str] = {}
    for node in graph.nodes:
        for partition in node.partitions:
            target = (node.spec.key, partition)
            for source in graph.inputs(node, partition):
                dependents.setdefault(source, []).append(target)
            why = _why_stale(graph, records, node, partition, source_versions)
            if why is None and outputs and target in outputs:
                why = outputs[target]
            if why is not None:
                reasons[target] = why
    # Breadth first, in the graph's order: what follows many stale inputs is said to follow
    # the first of them, and the same plan reads the same every time.
    frontier = deque(reasons)
    while frontier:
        parent = frontier.popleft()
        for child in dependents.get(parent, []):
            if child not in reasons:
                reasons[child] = f"its input {label(parent)} is rebuilt first"
                frontier.append(child)
        for sibling in sorted(graph.together.get(parent[0], ())):
            if (sibling, parent[1]) not in reasons:
                reasons[(sibling, parent[1])] = f"computed together with {label(parent)}"
                frontier.append((sibling, parent[1]))
    return reasons


def stale_inputs(
    defs: Definitions,
    instance: DagsterInstance,
    key: AssetKey,
    source_versions: Mapping[Target, str] | None = None,
) -> dict[str, str]:
    """What is stale among the assets ``key`` is built from: label -> why. Empty when they
    form one complete, current state."""
    graph = _Graph(defs)
    upstream = graph.upstream_of(key)
    reasons = _stale_targets(graph, instance, source_versions or {})
    return {label(target): why for target, why in reasons.items() if target[0] in upstream}


def stale_plan(
    defs: Definitions,
    instance: DagsterInstance,
    source_versions: Mapping[Target, str] | None = None,
    outputs: Mapping[Target, str] | None = None,
) -> StalePlan:
    """Every stale asset partition, plus everything downstream of one, grouped into runs.
    ``source_versions``: the current version of each observed source partition (for this
    project, each task's prompt); ``outputs``: see ``_stale_targets``."""
    graph = _Graph(defs)
    reasons = _stale_targets(graph, instance, source_versions or {}, outputs)
    plan = StalePlan(reasons={label(target): why for target, why in reasons.items()})
    partitioned = [node for node in graph.nodes if node.partitions != [None]]
    first_partitioned = graph.nodes.index(partitioned[0]) if partitioned else len(graph.nodes)
    if partitioned:
        plan.partitions_def = partitioned[0].spec.partitions_def
    tasks: list[str] = []
    for position, node in enumerate(graph.nodes):
        if node.partitions == [None]:
            if (node.spec.key, None) in reasons:
                (plan.before if position < first_partitioned else plan.after).append(node.spec.key)
            continue
        tasks += [task for task in node.partitions if task not in tasks]
        for partition in node.partitions:
            if (node.spec.key, partition) in reasons:
                plan.by_task.setdefault(partition, []).append(node.spec.key)
    # In partition order, so that tasks in a row can share a run (a partition range).
    plan.by_task = {task: plan.by_task[task] for task in tasks if task in plan.by_task}
    return plan
