"""The headless build: rebuild exactly what is stale (:mod:`qwen_assets.orchestration.stale`), in order.

It runs through a real Dagster instance, so its runs show in the UI like any other. For its
whole build it holds the instance's build lock: a second build waits for the first, then
finds nothing left to do (the operating system frees the lock of a killed build), and the
sensor and the schedule request nothing meanwhile. Before each run it fails runs whose
process died, waits, sleeping, for runs queued or in progress (launched from the UI, say),
and plans again, so it never starts a run that would have to wait for the ``duckdb`` pool
inside Dagster, and never repeats what another run just built. Dagster's full logs go to a
file in the instance's ``logs/`` folder.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from dagster import (
    AssetCheckSeverity,
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    ExecuteInProcessResult,
)
from filelock import Timeout

from qwen_assets import dagster_internals
from qwen_assets.defs.jobs import ASSETS_JOB
from qwen_assets.defs.partitions import MapGrid
from qwen_assets.defs.projection_assets import COORDINATES, REPROJECT_TAG
from qwen_assets.errors import PlanError, error_names
from qwen_assets.orchestration.cost import embedding_cost, measured_speed
from qwen_assets.orchestration.plan import project_plan
from qwen_assets.orchestration.runs import (
    IN_PROGRESS,
    TRIGGER_TAG,
    build_lock,
    database_lock,
    dead_run,
    in_progress_runs,
    wait_for_live_runs,
    waiting_runs,
)
from qwen_assets.orchestration.sources import (
    changed_instruction_observations,
    record_source_versions,
)
from qwen_assets.orchestration.stale import PlannedRun, StalePlan, Target
from qwen_assets.pipeline.site import SiteError, folder_refusal
from qwen_assets.pipeline.storage import DatabaseDamagedError, move_aside
from qwen_assets.settings import Settings

LOG_FOLDER = "logs"
LISTED = 6  # more targets with one reason than this are said in one line
EMBEDDINGS = AssetKey("task_embeddings")
SAMPLE = AssetKey("newsgroups_sample")
INTERRUPTIONS = {dagster_internals.INTERRUPTED_ERROR, "KeyboardInterrupt"}
# DuckDB answers an interrupt (Ctrl-C, SIGTERM) that lands inside a query with this error of
# its own, and the interrupt itself is gone: such a step was interrupted, it did not fail.
DUCKDB_INTERRUPTED = "Query interrupted"

Log = Callable[[str], None]


@dataclass
class BuildReport:
    plan: StalePlan
    changed_instructions: list[str]
    run_ids: list[str] = field(default_factory=list)
    succeeded: bool = True
    failure: str | None = None  # one line: which asset failed, and why
    log_file: Path | None = None
    # What the non-blocking checks warned of (one line each): the build went on.
    warnings: list[str] = field(default_factory=list)


def build_stale(
    instance: DagsterInstance,
    settings: Settings,
    defs: Definitions,
    *,
    dry_run: bool = False,
    verbose: bool = False,
    force: Sequence[str] = (),
    log: Log = print,
) -> BuildReport:
    """Rebuild what is stale in ``defs`` (built from ``settings``); see the module's docstring.
    ``force``: assets (``name`` or ``name[partition]``) to rebuild even when fresh."""
    forced = forced_targets(defs, force)
    folders = {
        "site.output_dir": settings.site.output_dir,
        "publish.folder": settings.publish.folder,
    }
    for setting, folder in folders.items():  # said before anything is paid for
        refused = folder_refusal(Path(folder), setting) if folder else None
        if refused:
            raise SiteError(refused)
    if dry_run:
        return _plan_only(instance, settings, defs, forced, log)
    shared = database_lock(settings.storage.build_database)
    with ExitStack() as held:
        for lock, what in [
            (build_lock(instance), "on this Dagster instance"),
            (shared, f"on {settings.storage.build_database} (from another Dagster home)"),
        ]:
            if lock is None:
                continue
            try:
                lock.acquire(timeout=0)
            except Timeout:
                log(f"another qwen-assets build is running {what}; waiting for it")
                lock.acquire()
            held.callback(lock.release)
        return _build(instance, settings, defs, forced, verbose, log)


def _plan_only(
    instance: DagsterInstance,
    settings: Settings,
    defs: Definitions,
    forced: dict[Target, str],
    log: Log,
) -> BuildReport:
    """The plan, and what a build would repair first; it reads and writes nothing else."""
    for record in in_progress_runs(instance):
        found = dead_run(record)
        if found is not None:
            log(f"{found.describe()}: a build marks it failed and frees its pool slot first")
    grid = MapGrid(settings)
    changed = [
        grid.label(str(o.partition)) for o in changed_instruction_observations(instance, settings)
    ]
    try:
        plan = project_plan(defs, instance, settings, forced)
    except DatabaseDamagedError as error:
        log(f"{error.damage}: a build moves it aside and rebuilds it")
        return BuildReport(plan=StalePlan(), changed_instructions=changed)
    _describe(plan, changed, settings, instance, log)
    return BuildReport(plan=plan, changed_instructions=changed)


def _describe(
    plan: StalePlan, changed: list[str], settings: Settings, instance: DagsterInstance, log: Log
) -> None:
    if plan.reasons and all(why == "never materialized" for why in plan.reasons.values()):
        runs = len(plan.runs())
        log(
            f"nothing is built yet: building all {len(plan.reasons)} assets and partitions "
            f"in {runs} runs"
        )
    else:
        if len(changed) > LISTED:
            log(
                f"the prompts of {len(changed)} maps changed ({_span(changed)}), or what embeds "
                "them (model, size, runtime)"
            )
        else:
            for task in changed:
                log(f"the prompt of {task!r} changed, or what embeds it (model, size, runtime)")
        if plan.empty:
            log("everything is fresh: nothing to build")
        by_reason: dict[str, list[str]] = {}
        for target, reason in plan.reasons.items():
            by_reason.setdefault(reason, []).append(target)
        for reason, targets in by_reason.items():
            if len(targets) > LISTED:  # a new variant's row, say: one line, not dozens
                log(f"rebuild {len(targets)} assets and partitions ({_span(targets)}): {reason}")
            else:
                for target in targets:
                    log(f"rebuild {target}: {reason}")
    embedded = [key for key, assets in plan.by_task.items() if EMBEDDINGS in assets]
    for line in embedding_cost(
        settings,
        embedded,
        sample_rebuilt=SAMPLE in plan.before,
        speed_of=lambda model: measured_speed(instance, model),
    ):
        log(line)


def _build(
    instance: DagsterInstance,
    settings: Settings,
    defs: Definitions,
    forced: dict[Target, str],
    verbose: bool,
    log: Log,
) -> BuildReport:
    wait_for_live_runs(instance, log)
    changed = record_source_versions(instance, settings)
    try:
        plan = project_plan(defs, instance, settings, forced)
    except DatabaseDamagedError as error:
        # The builds' database holds nothing paid for (the cache does): rebuilt, not repaired.
        aside = move_aside(settings.storage.build_database)
        log(f"{error.damage}: moved it to {aside}; rebuilding it")
        plan = project_plan(defs, instance, settings, forced)
    _describe(plan, changed, settings, instance, log)
    report = BuildReport(plan=plan, changed_instructions=changed)
    if plan.empty:
        return report
    logs = dagster_internals.instance_folder(instance) / LOG_FOLDER
    logs.mkdir(parents=True, exist_ok=True)
    report.log_file = logs / f"build-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}.log"
    job = dagster_internals.job_of(defs, ASSETS_JOB)
    built: set[str] = set()
    while not plan.empty:
        if waiting_runs(instance):
            # Queued while this build planned: a trigger's tick that found the build lock free
            # just before this build took it. Its run goes first; then plan again.
            wait_for_live_runs(instance, log)
            plan = project_plan(defs, instance, settings, forced)
            continue
        run = plan.runs()[0]
        if run.describe() in built:
            report.succeeded = False
            report.failure = (
                f"{run.describe()} is still stale after it was built: "
                f"{plan.reasons.get(_first_target(run), 'see the plan')}"
            )
            break
        built.add(run.describe())
        log(f"building {run.describe()}")
        run_id = str(uuid.uuid4())
        report.run_ids.append(run_id)
        try:
            result = job.execute_in_process(
                instance=instance,
                run_id=run_id,
                partition_key=run.partition_key,
                asset_selection=run.keys,
                tags={
                    **run.tags,
                    **reproject_tag(run, forced),
                    TRIGGER_TAG: "qwen-assets build",
                },
                run_config={"loggers": {"console": {"config": {"log_level": _level(verbose)}}}},
                raise_on_error=False,
            )
        except BaseException:
            _stop(instance, run_id)
            raise
        finally:
            _append_log(instance, run_id, report.log_file)
        for line in _step_lines(instance, run_id):
            log(line)
        if not result.success:
            reason = _failure(result)
            if reason is None:  # interrupted (Ctrl-C, SIGTERM): stop the build, not just the run
                _stop(instance, run_id)
                raise KeyboardInterrupt
            report.succeeded = False
            report.failure = f"{run.describe()} failed: {reason}"
            break
        for warning in _warnings(result):
            log(f"warning: {warning}")
            report.warnings.append(warning)
        # Take turns: whatever was launched meanwhile (the UI) runs first, then plan again.
        wait_for_live_runs(instance, log)
        for key in run.keys:  # forced once: what a run built is no longer forced
            for partition in run.tasks or (None,):
                forced.pop((key, partition), None)
        plan = project_plan(defs, instance, settings, forced)
    return report


def reproject_tag(run: PlannedRun, forced: Mapping[Target, str]) -> dict[str, str]:
    """Maps forced in this run are projected anew, not kept (see REPROJECT_TAG)."""
    maps = [
        partition
        for (key, partition) in forced
        if key == COORDINATES and key in run.keys and partition in run.tasks
    ]
    return {REPROJECT_TAG: ",".join(maps)} if maps else {}


def forced_targets(defs: Definitions, names: Sequence[str]) -> dict[Target, str]:
    """``--force`` arguments as targets: ``name`` (every partition) or ``name[partition]``."""
    specs = {
        spec.key.to_user_string(): spec
        for spec in defs.resolve_all_asset_specs()
        if dagster_internals.materializable(dagster_internals.assets_def_of(defs, spec.key))
    }
    forced: dict[Target, str] = {}
    for name in names:
        asset, _, partition = name.partition("[")
        spec = specs.get(asset)
        if spec is None:
            raise PlanError(f"--force {name}: no such asset; assets: {', '.join(sorted(specs))}")
        keys = (
            [str(key) for key in spec.partitions_def.get_partition_keys()]
            if spec.partitions_def
            else [None]
        )
        wanted = [partition.removesuffix("]")] if partition else keys
        unknown = [key for key in wanted if key not in keys]
        if unknown:
            allowed = ", ".join(str(key) for key in keys) if keys != [None] else "none"
            raise PlanError(f"--force {name}: no partition {unknown[0]!r}; partitions: {allowed}")
        forced.update({(spec.key, key): "asked for by --force" for key in wanted})
    return forced


def _span(names: list[str]) -> str:
    return f"{names[0]} ... {names[-1]}"


def _first_target(run: PlannedRun) -> str:
    key = run.keys[0].to_user_string()
    return f"{key}[{run.tasks[0]}]" if run.tasks else key


def _level(verbose: bool) -> str:
    return "DEBUG" if verbose else "CRITICAL"


def _stop(instance: DagsterInstance, run_id: str) -> None:
    """A run this process started and a person stopped (Ctrl-C, SIGTERM): canceled, as a run
    stopped from the UI is. Dagster records an interrupted step as a failed run, or leaves
    the run open when the interrupt lands outside a step."""
    run = instance.get_run_by_id(run_id)
    if run is not None and run.status in {*IN_PROGRESS, DagsterRunStatus.FAILURE}:
        dagster_internals.cancel_run(instance, run, "Stopped by Ctrl-C or SIGTERM.")
    dagster_internals.free_pool_slots(instance, run_id)


def _failure(result: ExecuteInProcessResult) -> str | None:
    """The reason of the first failed step, in one line; None when it was interrupted."""
    for event in result.all_events:
        if event.event_type != DagsterEventType.STEP_FAILURE:
            continue
        chain = []
        error = dagster_internals.step_error(event)
        while error is not None:
            chain.append(error)
            error = error.cause
        if not chain:
            return f"step {event.step_key} failed"
        if any(
            error.cls_name in INTERRUPTIONS or error.message.strip().endswith(DUCKDB_INTERRUPTED)
            for error in chain
        ):
            return None
        if chain[0].cls_name == dagster_internals.CHECK_FAILED_ERROR:
            return f"{event.step_key}: {_failed_checks(result)}"
        # The message written for people if there is one (the cause it wraps, an URLError,
        # say, explains less), else the innermost error.
        people = [error for error in chain if error.cls_name in error_names()]
        error = people[0] if people else chain[-1]
        lines = [line.strip() for line in error.message.splitlines() if line.strip()]
        # A message written for people is said whole (its advice may sit on a later line);
        # another error, by its first line.
        message = " ".join(lines) if people else (lines[0] if lines else "")
        message = message.split(": ", 1)[1] if ": " in message else message
        shown = message if people else f"{error.cls_name}: {message}"
        return f"{event.step_key}: {shown}"
    for event in result.all_events:  # no step failed: the run itself did (an interruption)
        if event.event_type == DagsterEventType.RUN_FAILURE:
            return None
    return "the run failed"


def _warnings(result: ExecuteInProcessResult) -> list[str]:
    """What the run's failed non-blocking checks said, a line per map they name (their
    metadata), else their name."""
    return [
        line
        for evaluation in dagster_internals.check_evaluations(result)
        if not evaluation.passed and evaluation.severity == AssetCheckSeverity.WARN
        for line in [str(value.value) for value in evaluation.metadata.values()]
        or [f"check {evaluation.check_name} failed"]
    ]


def _failed_checks(result: ExecuteInProcessResult) -> str:
    """What the failed blocking checks found, per partition."""
    found = [
        f"blocking check {evaluation.check_name} failed ("
        + "; ".join(f"{task}: {value.value}" for task, value in evaluation.metadata.items())
        + ")"
        for evaluation in dagster_internals.check_evaluations(result)
        if not evaluation.passed
    ]
    return ", ".join(found) + "; nothing after it was built" if found else "a check failed"


STEP_EVENTS = {
    DagsterEventType.STEP_START,
    DagsterEventType.STEP_SUCCESS,
    DagsterEventType.STEP_FAILURE,
}


def _step_lines(instance: DagsterInstance, run_id: str) -> list[str]:
    started: dict[str, float] = {}
    lines = []
    for record in dagster_internals.run_log(instance, run_id, of_type=STEP_EVENTS):
        entry = record.event_log_entry
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type == DagsterEventType.STEP_START:
            started[event.step_key] = entry.timestamp
            continue
        seconds = entry.timestamp - started.get(event.step_key, entry.timestamp)
        mark = "ok" if event.event_type == DagsterEventType.STEP_SUCCESS else "FAILED"
        lines.append(f"  {mark:6} {event.step_key} ({_duration(seconds)})")
    return lines


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m {rest:02d}s" if minutes else f"{seconds:.1f}s"


def _append_log(instance: DagsterInstance, run_id: str, path: Path | None) -> None:
    if path is None:
        return
    with path.open("a", encoding="utf-8") as out:
        for record in dagster_internals.run_log(instance, run_id):
            entry = record.event_log_entry
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.timestamp))
            step = f" {entry.step_key}" if entry.step_key else ""
            out.write(f"{stamp} {run_id[:8]}{step} {entry.message}\n")
            event = entry.dagster_event
            if event is not None and event.event_type == DagsterEventType.STEP_FAILURE:
                error = dagster_internals.step_error(event)
                out.write(error.to_string() if error is not None else "")
