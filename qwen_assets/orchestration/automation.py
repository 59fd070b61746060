"""How the daemon keeps the site current: three ways to build what is stale (a sensor, a
schedule, a job a person launches), and a sensor that keeps the UI's stale badges true.

- ``rebuild_stale_assets`` (on by default): every 10 s (``automation.sensor_interval_seconds``),
  builds what a settings edit made stale, so an edit is published a minute or so after it is
  reloaded.
- ``daily_rebuild`` (off by default): at 05:00 UTC, the same once a day, for a deployment
  that batches the day's edits into one build (and one bill): turn the sensor off and the
  schedule on.
- ``rebuild_stale`` (a job): the same at once, for a person in the UI (Jobs → rebuild_stale →
  Launch run). Its one step plans and says what will be built; it builds nothing itself, since
  its own run would hold the one writer's turn that the plan's runs need.
- ``continue_rebuild`` carries each of their plans on, a run at a time: it launches the next
  run as soon as the daemon sees one succeed (within about 5 s), not a tick later.
- ``observe_task_instructions`` (on by default): records each changed prompt (and a changed
  corpus file), so the UI shows the edited partitions stale with the rebuild sensor on or off.

They build the way `qwen-assets build` does: plan with the one stale rule
(:mod:`qwen_assets.orchestration.stale`), launch the plan's first run only, and plan again
once it has succeeded. So a run that fails (a blocking check that failed on a rebuilt
partition, say) keeps everything after it out: nothing queued behind it can publish a site
built on what failed. The sensor then tries that run again only once the settings or the
corpus file change (the edit that fixes it); a person can launch it from the UI meanwhile.
Every trigger first fails runs whose process died (:mod:`qwen_assets.orchestration.runs`),
and requests nothing while `qwen-assets build` is building or a run is queued or in
progress: DuckDB takes one writer.
"""

from collections.abc import Callable
from typing import Any

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    Failure,
    OpExecutionContext,
    RunRecord,
    RunRequest,
    RunsFilter,
    RunStatusSensorContext,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    job,
    op,
    run_status_sensor,
    schedule,
    sensor,
)

from qwen_assets.defs.jobs import ASSETS_JOB
from qwen_assets.orchestration.plan import project_plan
from qwen_assets.orchestration.runs import (
    TRIGGER_TAG,
    build_running,
    fail_dead_runs,
    waiting_runs,
)
from qwen_assets.orchestration.sources import (
    changed_source_observations,
    corpus_version,
    record_source_versions,
)
from qwen_assets.orchestration.stale import PlannedRun
from qwen_assets.settings import Settings, fingerprint

SENSOR = "rebuild_stale_assets sensor"
SCHEDULE = "daily_rebuild schedule"
MANUAL = "rebuild_stale job"
# The triggers whose plan continue_rebuild carries on once a run of it has succeeded.
CONTINUED = {SENSOR, SCHEDULE, MANUAL}
# How often continue_rebuild looks for a run that succeeded: at every turn of the sensor
# daemon's loop (about every 5 s, its floor), so the next run of a plan follows at once.
CONTINUE_INTERVAL_SECONDS = 1
# On each run a trigger launches: which run of which settings it is, so that a run that
# failed is not launched again, the same, until the settings change.
PLANNED_TAG = "qwen_assets/planned"


def planned(run: PlannedRun, settings: Settings) -> str:
    """The run and what it was planned from: the settings, and the corpus file's content."""
    return f"{run.describe()} @ {fingerprint([settings.model_dump(), corpus_version(settings)])}"


def run_request(run: PlannedRun, settings: Settings, trigger: str, run_key: str | None = None):
    return RunRequest(
        run_key=run_key,
        asset_selection=run.keys,
        partition_key=run.partition_key,
        tags={**run.tags, TRIGGER_TAG: trigger, PLANNED_TAG: planned(run, settings)},
    )


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


def last_run_of(instance: DagsterInstance, trigger: str) -> RunRecord | None:
    records = instance.get_run_records(RunsFilter(tags={TRIGGER_TAG: trigger}), limit=1)
    return records[0] if records else None


def failed_before(instance: DagsterInstance, trigger: str, tag: str) -> RunRecord | None:
    """The trigger's last run, if it failed and was this very run of these settings."""
    last = last_run_of(instance, trigger)
    if last is None or last.dagster_run.status != DagsterRunStatus.FAILURE:
        return None
    return last if last.dagster_run.tags.get(PLANNED_TAG) == tag else None


def build_automation(settings: Settings, defs_of: Callable[[], Definitions], assets: Any):
    """The rebuild sensor, the observing sensor, the daily schedule, the rebuild_stale job
    and the sensor that continues the plans of those two, over the Definitions ``defs_of``
    returns; the runs they launch are of ``assets`` (the job of :mod:`qwen_assets.defs.jobs`)."""

    @sensor(
        name="rebuild_stale_assets",
        job_name=ASSETS_JOB,
        minimum_interval_seconds=settings.automation.sensor_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="After a settings edit and a reload of the code location, rebuilds exactly "
        "the stale partitions, a run at a time (one edited instruction: that task's embeddings "
        "and map, then the site). A failed run stops what follows it until the settings "
        "(or the corpus file) change. Records each changed prompt as an observation of "
        "task_instructions, and a changed corpus file as one of corpus_file.",
    )
    def rebuild_stale_assets(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        busy = busy_reason(context.instance)
        if busy:
            return SkipReason(busy)
        # Recorded here too, not only by observe_task_instructions: in the tick that launches
        # the run, so the prompt's new version is on record before the run's embeddings are
        # (recorded after them, it would mark the fresh partition stale in the UI).
        observations = changed_source_observations(context.instance, settings)
        plan = project_plan(defs_of(), context.instance, settings)
        if plan.empty:
            return SensorResult(asset_events=observations, skip_reason="everything is fresh")
        first = plan.runs()[0]
        failed = failed_before(context.instance, SENSOR, planned(first, settings))
        if failed is not None:
            return SensorResult(
                asset_events=observations,
                skip_reason=f"run {failed.dagster_run.run_id[:8]} ({first.describe()}) failed: "
                "nothing after it is built until the settings change (the edit that fixes it) "
                "or it is launched again from the UI; its log says why",
            )
        return SensorResult(
            run_requests=[run_request(first, settings, SENSOR)], asset_events=observations
        )

    @sensor(
        name="observe_task_instructions",
        minimum_interval_seconds=settings.automation.sensor_interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Records each task's changed prompt as an observation of "
        "task_instructions (and a changed corpus file as one of corpus_file), so the UI shows "
        "exactly what an edit made stale within one interval of a reload, whether "
        "rebuild_stale_assets is on or off. Builds nothing.",
    )
    def observe_task_instructions(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        observations = changed_source_observations(context.instance, settings)
        if not observations:
            return SkipReason("no prompt or corpus file changed")
        return SensorResult(asset_events=observations)

    @schedule(
        name="daily_rebuild",
        cron_schedule="0 5 * * *",
        job_name=ASSETS_JOB,
        default_status=DefaultScheduleStatus.STOPPED,
        description="Once a day, builds whatever the day's edits made stale and publishes the "
        "site: turn rebuild_stale_assets off and this on to batch edits into one daily build. "
        "Launches the plan's first run; continue_rebuild launches the rest, a run at a "
        "time. A day with nothing changed launches nothing.",
    )
    def daily_rebuild(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        busy = busy_reason(context.instance)
        if busy:
            return SkipReason(busy)
        record_source_versions(context.instance, settings)
        plan = project_plan(defs_of(), context.instance, settings)
        if plan.empty:
            return SkipReason("everything is fresh")
        first = plan.runs()[0]
        # A schedule's run needs a key unique within its tick.
        return run_request(first, settings, SCHEDULE, run_key=first.describe())

    @op(
        name="plan_stale_rebuild",
        required_resource_keys={"run_worker"},  # records its process, as every run does
        description="Records changed prompts, plans what is stale and logs the plan; "
        "continue_rebuild launches its runs once this step has succeeded.",
    )
    def plan_stale_rebuild(context: OpExecutionContext) -> None:
        fail_dead_runs(context.instance)
        if build_running(context.instance):
            raise Failure(
                "a qwen-assets build is running: launch rebuild_stale again once it is done"
            )
        others = [
            record.dagster_run
            for record in waiting_runs(context.instance)
            if record.dagster_run.run_id != context.run_id
        ]
        if others:
            raise Failure(
                f"run {others[-1].run_id[:8]} is {others[-1].status.value.lower()}: launch "
                "rebuild_stale again once it is done (DuckDB takes one writer)"
            )
        record_source_versions(context.instance, settings)
        plan = project_plan(defs_of(), context.instance, settings)
        if plan.empty:
            context.log.info("everything is fresh: nothing to build")
            return
        runs = plan.runs()
        context.log.info(
            f"continue_rebuild launches {len(runs)} run(s), one after another: "
            + "; ".join(run.describe() for run in runs)
        )

    @job(
        name="rebuild_stale",
        tags={TRIGGER_TAG: MANUAL},
        description="Launch it (Launch run, no config) to build exactly what is stale now and "
        "publish the site, as the rebuild_stale_assets sensor would: for when the sensor is "
        "off. Its step plans; continue_rebuild launches the plan's runs, a run at a time.",
    )
    def rebuild_stale() -> None:
        plan_stale_rebuild()

    @run_status_sensor(
        name="continue_rebuild",
        run_status=DagsterRunStatus.SUCCESS,
        monitored_jobs=[assets, rebuild_stale],
        request_job=assets,
        minimum_interval_seconds=CONTINUE_INTERVAL_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
        description="When a run that rebuild_stale_assets, daily_rebuild or the rebuild_stale "
        "job launched succeeds, plans again and launches the next run of its plan at once; a "
        "failed run ends that build there.",
    )
    def continue_rebuild(context: RunStatusSensorContext) -> RunRequest | SkipReason:
        trigger = context.dagster_run.tags.get(TRIGGER_TAG)
        if trigger not in CONTINUED:
            return SkipReason("not a run of rebuild_stale_assets, daily_rebuild or rebuild_stale")
        busy = busy_reason(context.instance)
        if busy:
            return SkipReason(busy)
        plan = project_plan(defs_of(), context.instance, settings)
        if plan.empty:
            return SkipReason(f"the {trigger}'s build is done")
        return run_request(plan.runs()[0], settings, trigger)

    return (
        rebuild_stale_assets,
        observe_task_instructions,
        daily_rebuild,
        rebuild_stale,
        continue_rebuild,
    )
