"""Run bookkeeping that keeps a crashed run from blocking the next one.

A run killed with SIGKILL (or by the OOM killer, a reboot, a killed container) never writes
its end: Dagster keeps showing it STARTED and it keeps its ``duckdb`` pool slot, so every
later run waits for a slot that is never freed. So each run's own process records who it is
(host, pid and start time: the ``RunWorker`` resource of :mod:`qwen_assets.defs.run_worker`,
which every asset requires), and
whatever launches the next run (the headless build, the sensor, the schedule) first calls
:func:`fail_dead_runs`: a run whose recorded process is gone, on this host, is marked failed
and its slots freed, and the next run starts as if nothing happened. A run recorded on
another host is never judged from here; nor is one whose process never recorded itself (it
died while starting: run monitoring's start timeout, or Terminate in the UI, ends it).

``run_monitoring`` in the project's ``dagster.yaml`` covers what Dagster's daemon can see by
itself (runs stuck STARTING or CANCELING, slots held by runs that ended).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus, RunRecord, RunsFilter
from filelock import FileLock, Timeout

from qwen_assets import dagster_internals
from qwen_assets.defs.run_worker import WORKER_TAG, Worker
from qwen_assets.pipeline.storage import is_local_file

# Tags on runs this project launches, so a person reading the run list sees who started it.
TRIGGER_TAG = "qwen_assets/trigger"
IN_PROGRESS = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
# Runs to wait for. Not NOT_STARTED: the daemon queues what it creates in the same tick, and a
# run left NOT_STARTED by a process killed before it began would keep the triggers waiting.
WAITING = [DagsterRunStatus.QUEUED, *IN_PROGRESS]
# Held by `qwen-assets build` for its whole build, in the instance's folder: the triggers
# request nothing while it is held, so the command line and the daemon take turns.
LOCK_FILE = "qwen-assets-build.lock"


@dataclass(frozen=True)
class DeadRun:
    run_id: str
    job_name: str
    pid: int

    def describe(self) -> str:
        return f"run {self.run_id[:8]} ({self.job_name}): its process {self.pid} is gone"


def in_progress_runs(instance: DagsterInstance) -> list[RunRecord]:
    return list(instance.get_run_records(RunsFilter(statuses=IN_PROGRESS)))


def waiting_runs(instance: DagsterInstance) -> list[RunRecord]:
    """Runs queued or in progress, whatever launched them."""
    return list(instance.get_run_records(RunsFilter(statuses=WAITING)))


def build_lock(instance: DagsterInstance) -> FileLock:
    return FileLock(str(dagster_internals.instance_folder(instance) / LOCK_FILE))


def database_lock(database: str) -> FileLock | None:
    """The lock a build holds on the builds' database itself: two Dagster homes (two folders,
    two users) building over the same files take turns, as builds on one instance do."""
    if not is_local_file(database):
        return None
    path = Path(database).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path.with_name(f".{path.name}.build.lock")))


def build_running(instance: DagsterInstance) -> bool:
    """Is a `qwen-assets build` (another process) building on this instance now?"""
    lock = build_lock(instance)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def dead_run(record: RunRecord) -> DeadRun | None:
    """The run, if the process it recorded is gone; None when it is alive, recorded on
    another host, or never recorded."""
    worker = Worker.of(record.dagster_run.tags.get(WORKER_TAG))
    if worker is None or worker.host != socket.gethostname() or worker.alive():
        return None
    return DeadRun(record.dagster_run.run_id, record.dagster_run.job_name, worker.pid)


def fail_dead_runs(instance: DagsterInstance) -> list[DeadRun]:
    """Mark in-progress runs whose process is gone as failed, and free their pool slots (only
    theirs: a run that starts meanwhile keeps its own). Returns the runs it marked failed."""
    dead: list[DeadRun] = []
    for record in in_progress_runs(instance):
        found = dead_run(record)
        if found is None:
            continue
        dagster_internals.fail_run(
            instance,
            record.dagster_run,
            f"Marked failed: the run's process ({found.pid}) is gone (killed, out of memory or "
            "a reboot). Embeddings it received are cached; a rebuild asks only for the rest.",
        )
        dagster_internals.free_pool_slots(instance, found.run_id)
        dead.append(found)
    return dead


def wait_for_live_runs(
    instance: DagsterInstance,
    log: Callable[[str], None],
    poll_seconds: float = 2.0,
) -> None:
    """Block, sleeping, while another run is queued or in progress: DuckDB takes one writer,
    and a run started now would only wait for the pool inside Dagster. Ctrl-C stops the wait."""
    announced: set[str] = set()
    while True:
        for found in fail_dead_runs(instance):
            log(f"{found.describe()}: marked it failed and freed its pool slot")
        live = waiting_runs(instance)
        if not live:
            return
        for record in live:
            run = record.dagster_run
            if run.run_id not in announced:
                announced.add(run.run_id)
                log(
                    f"waiting for run {run.run_id[:8]} ({run.job_name}, "
                    f"{run.tags.get(TRIGGER_TAG, 'launched from the UI or the daemon')}, "
                    f"{run.status.value.lower()}) to finish; Ctrl-C stops waiting"
                )
        time.sleep(poll_seconds)
