"""Run bookkeeping that keeps a crashed run from blocking the next one.

A run killed with SIGKILL (or by the OOM killer, a reboot, a killed container) never writes
its end: Dagster keeps showing it STARTED and it keeps its ``duckdb`` pool slot, so every
later run waits for a slot that is never freed. Dagster records, with every event of a run,
the pid of the process that executed it; a run whose process is gone is dead. Whatever
launches the next run (the headless build, the sensor, the schedule) calls
:func:`fail_dead_runs` first, which marks such runs failed and frees their slots through
the instance's run and concurrency API, so the next run starts as if nothing happened.

``run_monitoring`` in the project's ``dagster.yaml`` covers what Dagster's daemon can see
by itself (runs stuck STARTING or CANCELING, slots held by runs that ended).

The check uses process ids, so it applies to runs executed on this machine: the project's
instance (SQLite under ``DAGSTER_HOME``) is local to one machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil
from dagster import DagsterInstance, DagsterRunStatus, RunRecord, RunsFilter

# Tags on runs this project launches, so a person reading the run list sees who started it.
TRIGGER_TAG = "qwen_assets/trigger"
IN_PROGRESS = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
# Dagster stamps each event with the pid of the process that emitted it; the newest ones
# come from the run's own process.
RECENT_EVENTS = 50
# A process that started this long after the run's last event is another process that was
# given the dead one's pid.
PID_REUSE_SLACK_SECONDS = 1.0


@dataclass(frozen=True)
class DeadRun:
    run_id: str
    job_name: str
    pid: int

    def describe(self) -> str:
        return f"run {self.run_id[:8]} ({self.job_name}): its process {self.pid} is gone"


def run_pid(instance: DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """The pid that executed the run, and the time of its newest event; None before any."""
    records = instance.get_records_for_run(run_id, limit=RECENT_EVENTS, ascending=False).records
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is not None and event.pid is not None:
            return event.pid, record.event_log_entry.timestamp
    return None


def process_alive(pid: int, last_seen: float) -> bool:
    """Is ``pid`` the process that was running at ``last_seen`` (not a reuse of its pid)?"""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return process.create_time() <= last_seen + PID_REUSE_SLACK_SECONDS
    except psutil.Error:  # NoSuchProcess, AccessDenied on a pid that is not ours
        return False


def in_progress_runs(instance: DagsterInstance) -> list[RunRecord]:
    return list(instance.get_run_records(RunsFilter(statuses=IN_PROGRESS)))


def dead_run(instance: DagsterInstance, record: RunRecord) -> DeadRun | None:
    found = run_pid(instance, record.dagster_run.run_id)
    if found is None:
        return None  # never executed anything; run monitoring's start timeout covers it
    pid, last_seen = found
    if process_alive(pid, last_seen):
        return None
    return DeadRun(record.dagster_run.run_id, record.dagster_run.job_name, pid)


def fail_dead_runs(instance: DagsterInstance) -> list[DeadRun]:
    """Mark in-progress runs whose process is gone as failed, and free every pool slot held
    by a run that is no longer running. Returns the runs it marked failed."""
    dead: list[DeadRun] = []
    running = set()
    for record in in_progress_runs(instance):
        found = dead_run(instance, record)
        if found is None:
            running.add(record.dagster_run.run_id)
            continue
        instance.report_run_failed(
            record.dagster_run,
            message=f"Marked failed: the run's process ({found.pid}) is gone (killed, out of "
            "memory or a reboot). Embeddings it received are cached; a rebuild asks only for the rest.",
        )
        dead.append(found)
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        for run_id in storage.get_concurrency_run_ids() - running:
            storage.free_concurrency_slots_for_run(run_id)
    return dead


def wait_for_live_runs(
    instance: DagsterInstance,
    log: Callable[[str], None],
    poll_seconds: float = 2.0,
) -> None:
    """Block, sleeping, while another live run is in progress: DuckDB takes one writer, and a
    run started now would only wait for the pool inside Dagster. Ctrl-C stops the wait."""
    announced: set[str] = set()
    while True:
        for found in fail_dead_runs(instance):
            log(f"{found.describe()}: marked it failed and freed its pool slot")
        live = in_progress_runs(instance)
        if not live:
            return
        for record in live:
            run = record.dagster_run
            if run.run_id not in announced:
                announced.add(run.run_id)
                log(
                    f"waiting for run {run.run_id[:8]} ({run.job_name}, "
                    f"{run.tags.get(TRIGGER_TAG, 'launched from the UI or the daemon')}) "
                    "to finish; Ctrl-C stops waiting"
                )
        time.sleep(poll_seconds)
