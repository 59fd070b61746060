"""The headless build: rebuild exactly what is stale (:mod:`qwen_assets.defs.stale`), in order.

It runs through a real Dagster instance, so its runs show in the UI like any other. Before it
plans, it takes the instance's build lock (a second build waits for the first, then finds
nothing left to do; the operating system frees the lock of a killed build), fails runs whose
process died and frees their pool slots, and waits, sleeping, for live runs launched from
the UI or the daemon. It never starts a run that would have to wait for the ``duckdb`` pool
inside Dagster. Dagster's full logs go to a file in the instance's ``logs/`` folder.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance, Definitions, ExecuteInProcessResult
from filelock import FileLock, Timeout

from qwen_assets.defs.automation import (
    BUILD_JOB,
    changed_instruction_observations,
    instruction_versions,
    record_instruction_versions,
)
from qwen_assets.defs.runs import (
    IN_PROGRESS,
    TRIGGER_TAG,
    dead_run,
    in_progress_runs,
    wait_for_live_runs,
)
from qwen_assets.defs.stale import StalePlan, stale_plan
from qwen_assets.errors import user_error_names
from qwen_assets.settings import Settings

LOCK_FILE = "qwen-assets-build.lock"
LOG_FOLDER = "logs"
INTERRUPTIONS = {"DagsterExecutionInterruptedError", "KeyboardInterrupt"}
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


def build_stale(
    instance: DagsterInstance,
    settings: Settings,
    defs: Definitions,
    *,
    dry_run: bool = False,
    verbose: bool = False,
    log: Log = print,
) -> BuildReport:
    """Rebuild what is stale in ``defs`` (built from ``settings``); see the module's docstring."""
    if dry_run:
        return _plan_only(instance, settings, defs, log)
    lock = FileLock(Path(instance.root_directory) / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log("another qwen-assets build is running on this Dagster instance; waiting for it")
        lock.acquire()
    try:
        return _build(instance, settings, defs, verbose, log)
    finally:
        lock.release()


def _plan_only(
    instance: DagsterInstance, settings: Settings, defs: Definitions, log: Log
) -> BuildReport:
    """The plan, and what a build would repair first; it reads and writes nothing else."""
    for record in in_progress_runs(instance):
        found = dead_run(instance, record)
        if found is not None:
            log(f"{found.describe()}: a build marks it failed and frees its pool slot first")
    changed = [str(o.partition) for o in changed_instruction_observations(instance, settings)]
    plan = stale_plan(defs, instance, instruction_versions(settings))
    _describe(plan, changed, log)
    return BuildReport(plan=plan, changed_instructions=changed)


def _describe(plan: StalePlan, changed: list[str], log: Log) -> None:
    for task in changed:
        log(
            f"the prompt of task {task!r} changed, or what embeds it (model, size, runtime), "
            "or it was never recorded"
        )
    if plan.empty:
        log("everything is fresh: nothing to build")
    for target, reason in plan.reasons.items():
        log(f"rebuild {target}: {reason}")


def _build(
    instance: DagsterInstance, settings: Settings, defs: Definitions, verbose: bool, log: Log
) -> BuildReport:
    wait_for_live_runs(instance, log)
    changed = record_instruction_versions(instance, settings)
    plan = stale_plan(defs, instance, instruction_versions(settings))
    _describe(plan, changed, log)
    report = BuildReport(plan=plan, changed_instructions=changed)
    if plan.empty:
        return report
    logs = Path(instance.root_directory) / LOG_FOLDER
    logs.mkdir(parents=True, exist_ok=True)
    report.log_file = logs / f"build-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}.log"
    job = defs.resolve_job_def(BUILD_JOB)
    for run in plan.runs():
        log(f"building {run.describe()}")
        run_id = str(uuid.uuid4())
        report.run_ids.append(run_id)
        try:
            result = job.execute_in_process(
                instance=instance,
                run_id=run_id,
                partition_key=run.partition_key,
                asset_selection=run.keys,
                tags={**run.tags, TRIGGER_TAG: "qwen-assets build"},
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
    return report


def _level(verbose: bool) -> str:
    return "DEBUG" if verbose else "CRITICAL"


def _stop(instance: DagsterInstance, run_id: str) -> None:
    """A run this process started and is leaving: mark it canceled if Dagster could not."""
    run = instance.get_run_by_id(run_id)
    if run is not None and run.status in IN_PROGRESS:
        instance.report_run_canceled(run, message="Stopped by Ctrl-C or SIGTERM.")
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        storage.free_concurrency_slots_for_run(run_id)


def _failure(result: ExecuteInProcessResult) -> str | None:
    """The reason of the first failed step, in one line; None when it was interrupted."""
    for event in result.all_events:
        if event.event_type != DagsterEventType.STEP_FAILURE or event.step_failure_data is None:
            continue
        error = event.step_failure_data.error
        while error is not None and error.cause is not None:
            error = error.cause
        if error is None:
            return f"step {event.step_key} failed"
        if error.cls_name in INTERRUPTIONS or error.message.strip().endswith(DUCKDB_INTERRUPTED):
            return None
        message = error.message.strip().splitlines()[0] if error.message.strip() else ""
        message = message.split(": ", 1)[1] if ": " in message else message
        shown = message if error.cls_name in user_error_names() else f"{error.cls_name}: {message}"
        return f"{event.step_key}: {shown}"
    for event in result.all_events:  # no step failed: the run itself did (an interruption)
        if event.event_type == DagsterEventType.RUN_FAILURE:
            return None
    return "the run failed"


STEP_EVENTS = {
    DagsterEventType.STEP_START,
    DagsterEventType.STEP_SUCCESS,
    DagsterEventType.STEP_FAILURE,
}


def _step_lines(instance: DagsterInstance, run_id: str) -> list[str]:
    started: dict[str, float] = {}
    lines = []
    for record in instance.get_records_for_run(run_id, of_type=STEP_EVENTS).records:
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
        for record in instance.get_records_for_run(run_id).records:
            entry = record.event_log_entry
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.timestamp))
            step = f" {entry.step_key}" if entry.step_key else ""
            out.write(f"{stamp} {run_id[:8]}{step} {entry.message}\n")
            event = entry.dagster_event
            if event is not None and event.event_type == DagsterEventType.STEP_FAILURE:
                error = event.step_failure_data.error
                out.write(error.to_string() if error is not None else "")
