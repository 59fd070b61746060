"""Keeping the assets fresh: automation conditions, the instruction watcher, the stale plan
shared by the headless build and the schedule, and the schedule itself.

Dagster's own stale status decides what is rebuilt, so the UI, the headless command and the
schedule always agree on what "stale" means.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from dagster import (
    AssetKey,
    AssetObservation,
    AssetRecordsFilter,
    AssetSelection,
    AutomationCondition,
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    schedule,
    sensor,
)
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.assets.graph.base_asset_graph import BaseAssetGraph
from dagster._core.definitions.data_version import (
    DATA_VERSION_TAG,
    CachingStaleStatusResolver,
    StaleStatus,
)
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)
from dagster._time import get_current_datetime

from qwen_assets.settings import Settings

INSTRUCTIONS = AssetKey("task_instructions")
BUILD_JOB = "build_assets"


def rebuild_when_inputs_change(ignore: AssetSelection | None = None) -> AutomationCondition:
    """Like ``eager()``, and also when the asset's own code version (its settings) changes.

    ``ignore``: inputs whose updates alone do not trigger a rebuild, because another input
    always follows them (the site waits for the maps rather than building once per step).
    """
    updated = AutomationCondition.any_deps_updated()
    if ignore is not None:
        updated = updated.ignore(ignore)
    return (
        (
            AutomationCondition.newly_missing()
            | updated
            | AutomationCondition.code_version_changed()
        ).since_last_handled()
        & ~AutomationCondition.any_deps_missing()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label("rebuild_when_inputs_change")


def observed_instruction_versions(instance: DagsterInstance, tasks: list[str]) -> dict[str, str]:
    """The latest recorded data version of each task's instruction partition."""
    versions = {}
    for task in tasks:
        records = instance.fetch_observations(
            AssetRecordsFilter(asset_key=INSTRUCTIONS, asset_partitions=[task]), limit=1
        ).records
        observation = records[0].asset_observation if records else None
        if observation is not None and DATA_VERSION_TAG in observation.tags:
            versions[task] = observation.tags[DATA_VERSION_TAG]
    return versions


def changed_instruction_observations(
    instance: DagsterInstance, settings: Settings
) -> list[AssetObservation]:
    """Observations for the tasks whose prompt differs from what was last recorded."""
    recorded = observed_instruction_versions(instance, settings.task_names)
    return [
        AssetObservation(
            INSTRUCTIONS,
            partition=task,
            tags={DATA_VERSION_TAG: settings.task_version(task)},
            metadata={"instruction": settings.tasks[task].instruction or "(none)"},
        )
        for task in settings.task_names
        if recorded.get(task) != settings.task_version(task)
    ]


def record_instruction_versions(instance: DagsterInstance, settings: Settings) -> list[str]:
    """Record changed instructions now; returns the tasks whose instruction changed."""
    observations = changed_instruction_observations(instance, settings)
    for observation in observations:
        instance.report_runless_asset_event(observation)
    return [str(observation.partition) for observation in observations]


@dataclass(frozen=True)
class PlannedRun:
    """One run: some assets, for no partition, one task, or a range of consecutive tasks
    (a single-run backfill, so the sample is read once and DuckDB is opened by one run)."""

    keys: list[AssetKey]
    tasks: tuple[str, ...] = ()

    @property
    def partition_key(self) -> str | None:
        return self.tasks[0] if len(self.tasks) == 1 else None

    @property
    def tags(self) -> dict[str, str]:
        if len(self.tasks) < 2:
            return {}
        return {
            ASSET_PARTITION_RANGE_START_TAG: self.tasks[0],
            ASSET_PARTITION_RANGE_END_TAG: self.tasks[-1],
        }

    def describe(self) -> str:
        names = ", ".join(key.to_user_string() for key in self.keys)
        if not self.tasks:
            return names
        span = self.tasks[0] if len(self.tasks) == 1 else f"{self.tasks[0]}...{self.tasks[-1]}"
        return f"{names} [{span}]"


@dataclass
class StalePlan:
    """What to rebuild, in order: assets feeding the task partitions, each task's
    partitions, then assets fed by them (the site)."""

    before: list[AssetKey] = field(default_factory=list)
    by_task: dict[str, list[AssetKey]] = field(default_factory=dict)
    after: list[AssetKey] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.before or self.by_task or self.after)

    def runs(self) -> list[PlannedRun]:
        """The plan as runs, in order; consecutive tasks needing the same assets share one."""
        runs = [PlannedRun(self.before)] if self.before else []
        groups: list[tuple[list[AssetKey], list[str]]] = []
        for task, keys in self.by_task.items():
            if groups and groups[-1][0] == keys:
                groups[-1][1].append(task)
            else:
                groups.append((keys, [task]))
        runs += [PlannedRun(keys, tuple(tasks)) for keys, tasks in groups]
        if self.after:
            runs.append(PlannedRun(self.after))
        return runs


def _label(target: AssetKeyPartitionKey) -> str:
    name = target.asset_key.to_user_string()
    return f"{name}[{target.partition_key}]" if target.partition_key else name


def stale_plan(asset_graph: BaseAssetGraph, instance: DagsterInstance) -> StalePlan:
    """Every missing or stale asset partition, as Dagster's own stale status reports it,
    plus everything downstream of those (which will be stale once they are rebuilt)."""
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=asset_graph,
    )
    resolver = CachingStaleStatusResolver(instance, asset_graph, loading_context=view)
    order = [
        key for key in asset_graph.toposorted_asset_keys if asset_graph.get(key).is_materializable
    ]
    plan = StalePlan()
    rebuild: set[AssetKeyPartitionKey] = set()
    for key in order:
        partitions_def = asset_graph.get(key).partitions_def
        for partition in partitions_def.get_partition_keys() if partitions_def else [None]:
            status = resolver.get_status(key, partition)
            if status == StaleStatus.FRESH:
                continue
            target = AssetKeyPartitionKey(key, partition)
            rebuild.add(target)
            if status == StaleStatus.MISSING:
                plan.reasons[_label(target)] = "never materialized"
            else:
                causes = resolver.get_stale_root_causes(key, partition)
                plan.reasons[_label(target)] = (
                    "; ".join(sorted({f"{_label(cause.key)} {cause.reason}" for cause in causes}))
                    or "stale"
                )
    frontier = list(rebuild)
    while frontier:
        parent = frontier.pop()
        for child in asset_graph.get_children_partitions(parent.asset_key, parent.partition_key):
            if child not in rebuild and asset_graph.get(child.asset_key).is_materializable:
                rebuild.add(child)
                plan.reasons[_label(child)] = f"its input {_label(parent)} is rebuilt first"
                frontier.append(child)
    first_partitioned = min(
        (order.index(key) for key in order if asset_graph.get(key).partitions_def),
        default=len(order),
    )
    tasks: list[str] = []
    for key in order:
        partitions_def = asset_graph.get(key).partitions_def
        if partitions_def is None:
            if AssetKeyPartitionKey(key, None) in rebuild:
                (plan.before if order.index(key) < first_partitioned else plan.after).append(key)
            continue
        tasks += [task for task in partitions_def.get_partition_keys() if task not in tasks]
        for partition in partitions_def.get_partition_keys():
            if AssetKeyPartitionKey(key, partition) in rebuild:
                plan.by_task.setdefault(partition, []).append(key)
    # In partition order, so that tasks in a row can share a run (a partition range).
    plan.by_task = {task: plan.by_task[task] for task in tasks if task in plan.by_task}
    return plan


def run_requests(plan: StalePlan) -> list[RunRequest]:
    """The plan as runs; the project's run queue executes them one at a time, in order."""
    return [
        RunRequest(
            run_key=run.describe(),  # unique within a tick, as Dagster asks of several runs
            asset_selection=run.keys,
            partition_key=run.partition_key,
            tags=run.tags,
        )
        for run in plan.runs()
    ]


def build_automation(settings: Settings, asset_graph_of: Callable[[], BaseAssetGraph]):
    """The instruction watcher sensor and the daily rebuild schedule."""

    @sensor(
        name="instruction_watcher",
        minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description="Records a new data version for each task whose prompt changed in the "
        "settings file, so exactly that task's embeddings become stale.",
    )
    def instruction_watcher(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        observations = changed_instruction_observations(context.instance, settings)
        if not observations:
            return SkipReason("no task's prompt changed")
        return SensorResult(asset_events=observations)

    @schedule(
        name="daily_rebuild",
        cron_schedule="0 5 * * *",
        job_name=BUILD_JOB,
        default_status=DefaultScheduleStatus.RUNNING,
        description="Rebuilds whatever is missing or stale, then republishes the site. "
        "A day with nothing changed launches nothing and pays for nothing.",
    )
    def daily_rebuild(context: ScheduleEvaluationContext) -> Iterator[RunRequest | SkipReason]:
        record_instruction_versions(context.instance, settings)
        plan = stale_plan(asset_graph_of(), context.instance)
        if plan.empty:
            yield SkipReason("everything is fresh")
            return
        yield from run_requests(plan)

    return instruction_watcher, daily_rebuild
