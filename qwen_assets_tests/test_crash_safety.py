"""Builds killed, interrupted or started twice, as real `qwen-assets build` processes against
the loopback embeddings server: the next build always finishes on its own, and nothing paid
for is asked for twice (beyond what was in flight when the process died). The server holds
its answers (``hold``) when a test must act while a build is certainly mid-embedding."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from dagster import DagsterInstance, DagsterRunStatus

from qwen_assets.pipeline.pause import PAUSE_ENV
from qwen_assets.pipeline.storage import read_table
from qwen_assets.testing import project_settings, write_settings
from qwen_assets_tests import cli_process
from qwen_assets_tests.cli_process import CommandProcess
from qwen_assets_tests.conftest import SMALL_CORPUS, wait_until_paused

PROBE_INSTRUCTION = "Say which newsgroup the given post was written for"
BATCH_SIZE = 8
IN_FLIGHT = 2


@dataclass
class CliProject:
    root: Path
    environ: dict[str, str]

    @property
    def database(self) -> str:
        return str(self.root / "warehouse.duckdb")

    def start(self, name: str, pause_at: str | None = None, **environ: str) -> CommandProcess:
        return cli_process.start(
            ["build"],
            {**self.environ, **({PAUSE_ENV: pause_at} if pause_at else {}), **environ},
            self.root / f"{name}.out",
            self.root / f"{name}.err",
        )

    def output(self, name: str) -> str:
        return (self.root / f"{name}.out").read_text() + (self.root / f"{name}.err").read_text()

    def runs(self) -> list:
        with DagsterInstance.from_config(self.environ["DAGSTER_HOME"]) as instance:
            return list(instance.get_runs())


@pytest.fixture
def project(small_built, server, small_archive, tmp_path: Path) -> Iterator[CliProject]:
    """A new small project whose `probe` task is not cached (so a build embeds it in many
    small batches) and whose `default` task is (a copy of the built project's cache)."""
    shutil.copyfile(small_built.cache, tmp_path / "cache.duckdb")
    raw = project_settings(tmp_path, server, small_archive)
    raw["corpus"].update(SMALL_CORPUS)
    raw["embedding"]["batch_size"] = BATCH_SIZE
    raw["embedding"]["http"]["max_in_flight"] = IN_FLIGHT
    raw["tasks"] = {
        "default": raw["tasks"]["default"],
        "probe": {"instruction": PROBE_INSTRUCTION},
    }
    settings = write_settings(tmp_path / "settings.toml", raw)
    environ = {
        **os.environ,
        "QWEN_ASSETS_SETTINGS": str(settings),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    server.reset()
    try:
        yield CliProject(tmp_path, environ)
    finally:
        server.release()


def probe_texts(server, instruction: str = PROBE_INSTRUCTION) -> list[str]:
    return [text for text in server.texts_received if instruction in text]


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.1)


def probe_requests(server, instruction: str = PROBE_INSTRUCTION) -> int:
    """Requests the server answered for ``instruction``'s prompts."""
    return sum(any(instruction in text for text in batch) for batch in server.received)


def hold_mid_embedding(server, instruction: str = PROBE_INSTRUCTION) -> None:
    """Once a build has had three requests answered, hold the rest: it is embedding, and stays
    (counted in requests, not texts: each request is a batch the build still waits for)."""
    wait_until(lambda: probe_requests(server, instruction) >= 3, 240, "it is embedding")
    server.hold()
    wait_until(lambda: server.waiting, 60, "its next request waits on the server")


@pytest.mark.long_running(seconds=15)
def test_two_builds_at_once_wait_quietly_and_sigterm_stops_either(project, server):
    first = project.start("first")
    hold_mid_embedding(server)
    second = project.start("second")
    wait_until(
        lambda: "another qwen-assets build is running" in project.output("second"),
        60,
        "the second build says it waits",
    )
    waiting = psutil.Process(second.pid)
    before = sum(waiting.cpu_times()[:2])
    time.sleep(3)
    assert sum(waiting.cpu_times()[:2]) - before < 0.3, "waiting does not spin a CPU"

    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 130, "SIGTERM stops a waiting build"

    assert server.waiting, "the first build is waiting for vectors"
    asked = len(server.arrivals)
    first.send_signal(signal.SIGTERM)
    # The server still holds its answers: a build that waited for the batch in flight, or
    # sent another, would not have ended here.
    assert first.wait(timeout=120) == 130, project.output("first")
    assert len(server.arrivals) == asked, "SIGTERM stops an embedding build within its batch"
    assert "build interrupted" in project.output("first")
    server.release()
    statuses = [run.status for run in project.runs()]
    assert Counter(statuses) == Counter([DagsterRunStatus.SUCCESS, DagsterRunStatus.CANCELED]), (
        "the corpus run succeeded; the interrupted run is canceled, not failed or left open"
    )
    with DagsterInstance.from_config(project.environ["DAGSTER_HOME"]) as instance:
        pool = instance.event_log_storage.get_concurrency_info("duckdb")
        assert pool.active_slot_count == 0, "its pool slot is freed"

    third = project.start("third")
    assert third.wait(timeout=300) == 0, project.output("third")
    assert "waiting" not in project.output("third"), "nothing was left to wait for"


def test_a_wrong_key_ends_the_build_with_one_line_and_leaks_nowhere(project, server):
    """A newcomer's first build on a new instance (telemetry on, as Dagster ships): one line
    says it builds everything, and a failure ends it with one line naming the asset and why;
    what Dagster prints of its own (the telemetry notice) is kept in the log file."""
    wrong = "sk-wrong-key-4f1d2c9e77"
    server.api_key = "sk-the-right-key"
    environ = {**project.environ, "SILICONFLOW_API_KEY": wrong}
    environ.pop("DAGSTER_DISABLE_TELEMETRY", None)
    try:
        build = cli_process.run(["build"], environ, project.root / "commands", timeout=300)
    finally:
        server.api_key = None
    assert build.returncode == 1
    closing = build.stderr.strip().splitlines()
    assert len(closing) == 1, build.stderr
    assert build.stdout.splitlines()[0].startswith("nothing is built yet: building all ")
    assert "never materialized" not in build.stdout and "Telemetry" not in build.stdout
    assert closing[0].startswith(
        "qwen-assets: task_embeddings, umap_coordinates [default...probe] failed: task_embeddings: "
    )
    assert "refused the API key from SILICONFLOW_API_KEY (HTTP 401)" in closing[0]
    log_file = Path(closing[0].split("(Dagster's full log: ")[1].rstrip(")"))
    assert "refused the API key" in log_file.read_text(), "the full story is in the log file"
    assert "Telemetry" in log_file.read_text(), "and what Dagster printed of its own"
    assert " DEBUG " not in build.stdout, "Dagster's own log lines stay out of the terminal"
    assert "building raw_newsgroups, newsgroups_sample" in build.stdout
    for text in (build.stdout, build.stderr, log_file.read_text()):
        assert wrong not in text


def probe_vectors(database: str) -> str:
    return read_table(
        database,
        "SELECT md5(string_agg(embedding::VARCHAR, ',' ORDER BY doc_id)) FROM task_embeddings "
        "WHERE task = 'probe'",
    ).iloc[0, 0]


@pytest.mark.long_running(seconds=27)
def test_builds_killed_mid_embedding_and_mid_publish_never_block_the_next(project, server):
    """SIGKILL anywhere: the next build marks the dead run failed and frees its slot, the
    database people query stays as the last complete build left it, and nothing paid for is
    asked for again beyond what was in flight."""
    assert project.start("first").wait(timeout=300) == 0, project.output("first")
    database = Path(project.database)
    before, vectors = database.read_bytes(), probe_vectors(project.database)
    edited = "Name the newsgroup the post was written for"
    settings = Path(project.environ["QWEN_ASSETS_SETTINGS"])
    settings.write_text(settings.read_text().replace(PROBE_INSTRUCTION, edited))
    server.reset()

    # Killed while embedding the edited task.
    second = project.start("second")
    hold_mid_embedding(server, edited)
    second.send_signal(signal.SIGKILL)
    second.wait()
    server.release()
    (killed,) = [run for run in project.runs() if run.status == DagsterRunStatus.STARTED]
    assert database.read_bytes() == before

    # The next build repairs that, embeds the rest, and is killed while it publishes: it
    # stops itself once the copy is written, before the rename (a pause point).
    third = project.start("third", pause_at="copy_database:copied")
    pattern = f".{database.name}.publishing-*"
    wait_until_paused(third, "copy_database:copied", lambda: project.output("third"))
    assert list(database.parent.glob(pattern)), "stopped while writing the copy"
    third.send_signal(signal.SIGKILL)
    third.wait()
    output = project.output("third")
    assert f"run {killed.run_id[:8]} (build_assets): its process {second.pid} is gone" in output
    assert "marked it failed and freed its pool slot" in output
    assert database.read_bytes() == before, "the database people query is whole and unchanged"
    assert probe_vectors(project.database) == vectors

    # And the next one finishes: it publishes and clears the killed copy.
    fourth = project.start("fourth")
    assert fourth.wait(timeout=300) == 0, project.output("fourth")
    assert "rebuild query_database" in project.output("fourth")
    assert not list(database.parent.glob(pattern)), "the killed copy is cleared"
    build_database = str(database.parent / "build" / database.name)
    assert probe_vectors(project.database) == probe_vectors(build_database) != vectors

    sent = Counter(probe_texts(server, edited))
    distinct = read_table(project.database, "SELECT count(DISTINCT text) FROM newsgroups_sample")
    assert len(sent) == distinct.iloc[0, 0], "every distinct probe prompt was embedded"
    assert max(sent.values()) <= 2
    twice = sum(1 for count in sent.values() if count == 2)
    assert twice <= IN_FLIGHT * BATCH_SIZE, "only what was in flight when it died is paid twice"
    statuses = {run.run_id: run.status for run in project.runs()}
    assert statuses[killed.run_id] == DagsterRunStatus.FAILURE
    assert DagsterRunStatus.STARTED not in statuses.values()
    plan = cli_process.run(
        ["build", "--dry-run"], project.environ, project.root / "commands", timeout=120
    )
    assert plan.returncode == 0 and "everything is fresh" in plan.stdout, plan.stdout


@pytest.mark.long_running(seconds=14)
def test_two_builds_from_two_dagster_homes_over_the_same_files_pay_once(project, server):
    """Two folders, two Dagster instances, one set of databases and one cache: the second
    build waits for the first (the lock is on the files, not the instance) and pays nothing."""
    first = project.start("first")
    hold_mid_embedding(server)
    other_home = project.root / "other_home"
    second = project.start("second", DAGSTER_HOME=str(other_home))
    wait_until(
        lambda: "(from another Dagster home); waiting for it" in project.output("second"),
        120,
        "the second build says it waits for the first",
    )
    server.release()
    assert first.wait(timeout=300) == 0, project.output("first")
    assert second.wait(timeout=300) == 0, project.output("second")
    sent = Counter(probe_texts(server))
    distinct = read_table(project.database, "SELECT count(DISTINCT text) FROM newsgroups_sample")
    assert len(sent) == distinct.iloc[0, 0] and max(sent.values()) == 1, "each prompt paid once"
