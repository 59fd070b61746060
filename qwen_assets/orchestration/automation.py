"""The two ways the daemon keeps the site current; one is on at a time.

- ``rebuild_stale_assets`` (on by default): every 30 s (``automation.sensor_interval_seconds``),
  builds what a settings edit made stale, so an edit is built and published within minutes.
- ``daily_rebuild`` (off by default): at 05:00 UTC, the same once a day, for a deployment
  that batches the day's edits into one build (and one bill): turn the sensor off and the
  schedule on.

Both ask the one rule in :mod:`qwen_assets.orchestration.stale` what is stale, as the headless build
does, so the UI, the daemon and the terminal agree. Both first fail runs whose process died
(:mod:`qwen_assets.orchestration.runs`), and request nothing while `qwen-assets build` is building or
a run is queued or in progress: DuckDB takes one writer, and the plan is made again after.
"""

from collections.abc import Callable

from dagster import (
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    schedule,
    sensor,
)

from qwen_assets.defs.jobs import ASSETS_JOB
from qwen_assets.orchestration.plan import project_plan
from qwen_assets.orchestration.prompts import (
    changed_instruction_observations,
    record_instruction_versions,
)
from qwen_assets.orchestration.runs import (
    TRIGGER_TAG,
    build_running,
    fail_dead_runs,
    waiting_runs,
)
from qwen_assets.orchestration.stale import StalePlan
from qwen_assets.settings import Settings


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
    """Fail dead runs; then say why to wait, if `qwen-assets build` is building or a live run
    is queued or in progress."""
    fail_dead_runs(instance)
    if build_running(instance):
        return "a qwen-assets build is running; planning again when it is done"
    waiting = waiting_runs(instance)
    if not waiting:
        return None
    run = waiting[-1].dagster_run
    return f"run {run.run_id[:8]} is {run.status.value.lower()}; planning again when it is done"


def build_automation(settings: Settings, defs_of: Callable[[], Definitions]):
    """The rebuild sensor and the daily schedule, over the Definitions ``defs_of`` returns."""

    @sensor(
        name="rebuild_stale_assets",
        job_name=ASSETS_JOB,
        minimum_interval_seconds=settings.automation.sensor_interval_seconds,
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
        plan = project_plan(defs_of(), context.instance, settings)
        if plan.empty:
            return SensorResult(asset_events=observations, skip_reason="everything is fresh")
        return SensorResult(
            run_requests=run_requests(plan, "rebuild_stale_assets sensor"),
            asset_events=observations,
        )

    @schedule(
        name="daily_rebuild",
        cron_schedule="0 5 * * *",
        job_name=ASSETS_JOB,
        default_status=DefaultScheduleStatus.STOPPED,
        description="Once a day, builds whatever the day's edits made stale and publishes the "
        "site: turn rebuild_stale_assets off and this on to batch edits into one daily build. "
        "A day with nothing changed launches nothing.",
    )
    def daily_rebuild(context: ScheduleEvaluationContext) -> list[RunRequest] | SkipReason:
        busy = busy_reason(context.instance)
        if busy:
            return SkipReason(busy)
        record_instruction_versions(context.instance, settings)
        plan = project_plan(defs_of(), context.instance, settings)
        if plan.empty:
            return SkipReason("everything is fresh")
        return run_requests(plan, "daily_rebuild schedule", keyed=True)

    return rebuild_stale_assets, daily_rebuild
