"""The two triggers: a sensor that rebuilds after a settings edit, and the daily schedule.

Both ask the one rule in :mod:`qwen_assets.defs.stale` what is stale, as the headless build
does, so the UI, the daemon and the terminal agree. Both first fail runs whose process died
(:mod:`qwen_assets.defs.runs`), and request nothing while a run is queued or in progress:
DuckDB takes one writer, and the plan is made again once that run is done.
"""

from collections.abc import Callable

from dagster import (
    AssetKey,
    AssetObservation,
    AssetRecordsFilter,
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    schedule,
    sensor,
)

from qwen_assets.defs.runs import IN_PROGRESS, TRIGGER_TAG, fail_dead_runs
from qwen_assets.defs.stale import DATA_VERSION_TAG, StalePlan, Target, stale_plan
from qwen_assets.settings import Settings

INSTRUCTIONS = AssetKey("task_instructions")
BUILD_JOB = "build_assets"
# Runs to wait for. Not NOT_STARTED: the daemon queues what it creates in the same tick, and a
# run left NOT_STARTED by a process killed before it began would keep the triggers waiting.
WAITING = [DagsterRunStatus.QUEUED, *IN_PROGRESS]


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


def run_requests(plan: StalePlan, trigger: str, keyed: bool = False) -> list[RunRequest]:
    """The plan as runs; the project's run queue executes them one at a time, in order.
    ``keyed``: a schedule's runs need keys, unique within its tick (a sensor's run keys would
    dedupe across all its ticks, so a plan that recurs would never run again)."""
    return [
        RunRequest(
            run_key=run.describe() if keyed else None,
            asset_selection=run.keys,
            partition_key=run.partition_key,
            tags={**run.tags, TRIGGER_TAG: trigger},
        )
        for run in plan.runs()
    ]


def busy_reason(instance: DagsterInstance) -> str | None:
    """Fail dead runs; then say why to wait, if a live run is queued or in progress."""
    fail_dead_runs(instance)
    waiting = list(instance.get_run_records(RunsFilter(statuses=WAITING), limit=1))
    if not waiting:
        return None
    run = waiting[0].dagster_run
    return f"run {run.run_id[:8]} is {run.status.value.lower()}; planning again when it is done"


def build_automation(settings: Settings, defs_of: Callable[[], Definitions]):
    """The rebuild sensor and the daily schedule, over the Definitions ``defs_of`` returns."""

    @sensor(
        name="rebuild_stale_assets",
        job_name=BUILD_JOB,
        minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description="After a settings edit and a reload of the code location, rebuilds exactly "
        "the stale partitions (one edited instruction: that task's embeddings and map, then "
        "the site). Records each changed prompt as an observation of task_instructions.",
    )
    def rebuild_stale_assets(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        busy = busy_reason(context.instance)
        if busy:
            return SkipReason(busy)
        observations = changed_instruction_observations(context.instance, settings)
        plan = stale_plan(defs_of(), context.instance, instruction_versions(settings))
        if plan.empty:
            return SensorResult(asset_events=observations, skip_reason="everything is fresh")
        return SensorResult(
            run_requests=run_requests(plan, "rebuild_stale_assets sensor"),
            asset_events=observations,
        )

    @schedule(
        name="daily_rebuild",
        cron_schedule="0 5 * * *",
        job_name=BUILD_JOB,
        default_status=DefaultScheduleStatus.RUNNING,
        description="Rebuilds whatever is missing or stale, then republishes the site; with the "
        "sensor running this finds nothing to do. A day with nothing changed launches nothing.",
    )
    def daily_rebuild(context: ScheduleEvaluationContext) -> list[RunRequest] | SkipReason:
        busy = busy_reason(context.instance)
        if busy:
            return SkipReason(busy)
        record_instruction_versions(context.instance, settings)
        plan = stale_plan(defs_of(), context.instance, instruction_versions(settings))
        if plan.empty:
            return SkipReason("everything is fresh")
        return run_requests(plan, "daily_rebuild schedule", keyed=True)

    return rebuild_stale_assets, daily_rebuild
