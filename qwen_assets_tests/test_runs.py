"""Dead runs, as the daemon's triggers meet them: a run whose process is gone is failed and its
pool slot freed by the next tick, which then plans as usual; a live run is waited for."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterRunStatus, build_sensor_context, instance_for_test

from qwen_assets.definitions import build_definitions
from qwen_assets.defs.run_worker import WORKER_TAG, Worker
from qwen_assets.orchestration.runs import fail_dead_runs
from qwen_assets.settings import load_settings
from qwen_assets.testing import settings_dict, write_settings
from qwen_assets_tests.conftest import rooted

POOL_OF_ONE = {"concurrency": {"pools": {"default_limit": 1}}}


STUCK_RUN = """
import sys, time
from dagster import DagsterInstance, Definitions, asset
from qwen_assets.defs.run_worker import RECORDS_ITS_WORKER, RunWorker

@asset(pool="duckdb", required_resource_keys=RECORDS_ITS_WORKER)
def slow_step():
    print("running", flush=True)
    time.sleep(600)

defs = Definitions(assets=[slow_step], resources={"run_worker": RunWorker()})
job = defs.resolve_implicit_global_asset_job_def()
with DagsterInstance.from_config(sys.argv[1]) as instance:
    job.execute_in_process(instance=instance)
"""


@pytest.fixture
def settings_file(tmp_path: Path) -> Path:
    """The default settings with every database, cache and site under ``tmp_path``: a tick
    plans against this test's own (empty) databases, never a ``data/`` folder of the
    directory the tests run from."""
    return write_settings(tmp_path / "settings.toml", rooted(settings_dict(), tmp_path))


def start_a_run(instance) -> subprocess.Popen:
    """A real run in another process, holding a slot of the duckdb pool, until killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", STUCK_RUN, instance.root_directory],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "running"
    return process


def kill_a_running_run(instance) -> tuple[str, int]:
    """A real run in another process, holding the duckdb pool's slot, killed with SIGKILL."""
    process = start_a_run(instance)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (record,) = instance.get_run_records()
    return record.dagster_run.run_id, process.pid


def test_the_sensor_fails_a_dead_run_frees_its_slot_and_plans(settings_file):
    defs = build_definitions(load_settings(settings_file))
    sensor = defs.resolve_sensor_def("rebuild_stale_assets")
    with instance_for_test(overrides=POOL_OF_ONE) as instance:
        run_id, pid = kill_a_running_run(instance)
        storage = instance.event_log_storage
        assert instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTED
        assert storage.get_concurrency_info("duckdb").active_slot_count == 1, "slot still held"

        with build_sensor_context(instance=instance, definitions=defs) as context:
            tick = sensor.evaluate_tick(context)

        assert instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE
        failure = [e for e in instance.all_logs(run_id) if e.dagster_event_type is not None][-1]
        assert f"process ({pid}) is gone" in failure.message
        assert storage.get_concurrency_info("duckdb").active_slot_count == 0, "slot freed"
        assert tick.run_requests, "with the dead run out of the way, the tick plans a build"


def test_a_live_run_is_left_alone():
    with instance_for_test(overrides=POOL_OF_ONE) as instance:
        process = start_a_run(instance)
        try:
            assert fail_dead_runs(instance) == []
            (record,) = instance.get_run_records()
            assert record.dagster_run.status == DagsterRunStatus.STARTED
        finally:
            process.kill()
            process.wait()


INTERRUPTED_QUERY = """
import os, signal, sys, threading
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, wherever we run
import duckdb
from dagster import DagsterInstance, Definitions, asset, define_asset_job
from qwen_assets.defs.jobs import ASSETS_JOB
from qwen_assets.orchestration.headless import build_stale
from qwen_assets.settings import load_settings

@asset
def long_query() -> None:
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    duckdb.sql("SELECT max(md5(i::VARCHAR)) FROM range(20000000) t(i)").fetchall()  # ~3 s

defs = Definitions(assets=[long_query], jobs=[define_asset_job(ASSETS_JOB)])
with DagsterInstance.from_config(sys.argv[1]) as instance:
    try:
        report = build_stale(instance, load_settings(sys.argv[2]), defs, log=lambda line: None)
        print("finished:", report.failure)
    except KeyboardInterrupt:
        print("interrupted")
"""


def test_an_interrupt_that_duckdb_turns_into_its_own_error_still_stops_the_build(settings_file):
    """DuckDB answers an interrupt that lands inside a query with "Query interrupted" and drops
    the interrupt: the build must still stop as interrupted (exit 130 in the CLI), not report a failure.
    (In a subprocess: under pytest's faulthandler, DuckDB does not see the signal. DuckDB 2.0
    at times looks at the signal only once the query ends, so the query is finite: either way
    the build must stop as interrupted.)"""
    with instance_for_test() as instance:
        finished = subprocess.run(
            [sys.executable, "-c", INTERRUPTED_QUERY, instance.root_directory, str(settings_file)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert finished.stdout.strip() == "interrupted", finished.stdout + finished.stderr[-2000:]
        (run,) = instance.get_runs()
        assert run.status == DagsterRunStatus.CANCELED, "closed as a person stopped it"


def test_a_run_recorded_on_another_host_is_never_judged_from_here(settings_file):
    defs = build_definitions(load_settings(settings_file))
    job = defs.resolve_job_def("build_assets")
    with instance_for_test() as instance:
        elsewhere = Worker("another-host.example", 4242, 1.0).tag
        run = instance.create_run_for_job(
            job, status=DagsterRunStatus.STARTED, tags={WORKER_TAG: elsewhere}
        )
        assert fail_dead_runs(instance) == []
        assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED


def test_a_process_we_may_not_inspect_is_alive(monkeypatch):
    """psutil's AccessDenied means the process exists (someone else's), not that it is gone."""
    import psutil

    def denied(pid):
        raise psutil.AccessDenied(pid)

    monkeypatch.setattr(psutil, "Process", denied)
    assert Worker("here", 1, 0.0).alive()


def test_only_the_slots_of_the_runs_it_failed_are_freed():
    """Two runs hold the pool's two slots: a dead one and a live one. Only the dead one's
    slot is freed; the live run keeps its own."""
    with instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 2}}}) as instance:
        run_id, _ = kill_a_running_run(instance)
        live = start_a_run(instance)
        try:
            storage = instance.event_log_storage
            assert storage.get_concurrency_info("duckdb").active_slot_count == 2
            (failed,) = fail_dead_runs(instance)
            assert failed.run_id == run_id
            assert storage.get_concurrency_info("duckdb").active_slot_count == 1
            assert storage.get_concurrency_run_ids() == {
                r.dagster_run.run_id
                for r in instance.get_run_records()
                if r.dagster_run.run_id != run_id
            }
        finally:
            live.kill()
            live.wait()
