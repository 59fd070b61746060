"""The project as people use it, all at once: a real `qwen-assets build` and a real `dg dev`
(webserver and daemon) rebuild the small project while one reader holds the database people
query and another queries it in a loop.

What it shows: no build waits on a reader (the builds run with ``storage.lock_wait_seconds =
0``, so one that met a reader's lock would fail); a reader never sees a mix of states; a
reader keeps the state it opened until it reconnects; the UI, the sensor and the headless
build agree on what one instruction edit makes stale and rebuild exactly that; and a
command-line build beside the live sensor takes turns with it.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from qwen_assets.settings import load_settings
from qwen_assets.testing import project_settings, write_settings
from qwen_assets.testing.embedding_server import Fault
from qwen_assets_tests import cli_process
from qwen_assets_tests.conftest import REPO, SMALL_CORPUS

PACKAGE_DAGSTER_YAML = REPO / "qwen_assets" / "dagster.yaml"
TASKS = ["default", "topic", "sentiment", "toxicity"]

# Every task's vectors and map, as one value: what tells two states of the tables apart.
FINGERPRINT = (
    "SELECT (SELECT md5(string_agg(embedding::VARCHAR, ',' ORDER BY task, doc_id)) "
    "FROM task_embeddings) || (SELECT md5(string_agg(x || ',' || y, ';' "
    "ORDER BY task, doc_id)) FROM umap_coordinates)"
)

# Checks one state of the database people query, on a new connection each pass, until the
# stop file appears; prints what it saw as JSON.
QUERY_LOOP = f"FINGERPRINT = {FINGERPRINT!r}\n" + textwrap.dedent(
    """
    import json, os, sys, time
    import duckdb

    path, stop = sys.argv[1], sys.argv[2]
    passes, failures, states = 0, [], set()
    while not os.path.exists(stop):
        if not os.path.exists(path):
            time.sleep(0.05)
            continue
        with duckdb.connect(path, read_only=True) as con:
            one = lambda sql: con.execute(sql).fetchall()
            try:
                documents = one("SELECT count(*) FROM newsgroups_sample")[0][0]
                vectors = dict(one("SELECT task, count(*) FROM task_embeddings GROUP BY task"))
                points = dict(one("SELECT task, count(*) FROM umap_coordinates GROUP BY task"))
                (tasks, versions, built_for, payload) = one(
                    "SELECT tasks, map_keys(task_versions), documents, payload_sha256 "
                    "FROM site_builds ORDER BY built_at DESC LIMIT 1"
                )[0]
                problems = []
                if set(vectors.values()) != {documents}:
                    problems.append(f"vectors per task {vectors}, {documents} posts")
                if points != vectors:
                    problems.append(f"points per task {points}, vectors {vectors}")
                if set(tasks) != set(vectors) or set(versions) != set(vectors):
                    problems.append(f"site_builds names {tasks}, the tables hold {sorted(vectors)}")
                if built_for != documents:
                    problems.append(f"site_builds counts {built_for} posts, the sample {documents}")
                if problems:
                    failures.append("; ".join(problems))
                fingerprint = one(FINGERPRINT)[0][0]
                states.add((payload, fingerprint))
            except Exception as error:
                failures.append(repr(error))
        passes += 1
        time.sleep(0.2)  # a reader's pace: each pass reads every vector, which costs a core
    print(json.dumps({"passes": passes, "failures": failures[:5], "states": sorted(states)}))
    """
)

# Holds one read-only connection, as a notebook does, until a line comes on stdin; then prints
# a fingerprint of every task's vectors through it, closes it and connects again. (DuckDB
# shares one open database between the connections of a process: a process sees a new state
# once all its connections to the old one are closed.)
HOLDER = textwrap.dedent(
    """
    import json, sys
    import duckdb

    SQL = ("SELECT task, md5(string_agg(embedding::VARCHAR, ',' ORDER BY doc_id)) "
           "FROM task_embeddings GROUP BY task")
    path = sys.argv[1]
    held = duckdb.connect(path, read_only=True)
    print(json.dumps(dict(held.execute(SQL).fetchall())), flush=True)
    sys.stdin.readline()
    still = dict(held.execute(SQL).fetchall())
    held.close()
    with duckdb.connect(path, read_only=True) as again:
        print(json.dumps({"held": still, "new": dict(again.execute(SQL).fetchall())}), flush=True)
    """
)


# What the query loop calls one state: the newest site build's payload, and every task's
# vectors and map.
FINAL_STATE = (
    "SELECT (SELECT payload_sha256 FROM site_builds ORDER BY built_at DESC LIMIT 1), "
    f"({FINGERPRINT})"
)


def run_sql(database: Path, sql: str) -> tuple:
    import duckdb

    with duckdb.connect(str(database), read_only=True) as connection:
        return connection.execute(sql).fetchall()[0]


PORT_TAKEN = "the port was taken"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition: Callable[[], object], seconds: float, what: str) -> object:
    deadline = time.monotonic() + seconds
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g}s waiting until {what}")
        time.sleep(0.25)


class DagsterUI:
    """A real `dg dev` from the repository root, and its GraphQL API."""

    def __init__(self, environ: dict[str, str], log: Path) -> None:
        self.log = log
        # `dg dev` takes a port number, not a bound socket: a free port is found by binding
        # and closing it, and if another process takes it first, dg dev starts on another.
        for _ in range(3):
            self.url = f"http://127.0.0.1:{free_port()}"
            self.process = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("dg")),
                    "dev",
                    "--port",
                    self.url.split(":")[-1],
                ],
                cwd=REPO,
                env=environ,
                stdout=log.open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its webserver, daemon and code servers stop together
            )
            if wait_until(self._up, 120, f"dg dev answers (its log: {log})") != PORT_TAKEN:
                return
            self.stop()
        raise AssertionError(f"dg dev found its port taken three times: {log}")

    def _up(self) -> bool | str:
        # dg dev keeps running when its webserver cannot bind: the log says so.
        if "address already in use" in self._said().lower():
            return PORT_TAKEN
        assert self.process.poll() is None, self._said()[-3000:]
        try:
            return httpx.get(self.url + "/server_info", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _said(self) -> str:
        return self.log.read_text(errors="replace")

    def query(self, text: str, **variables) -> dict:
        answer = httpx.post(
            self.url + "/graphql", json={"query": text, "variables": variables}, timeout=60
        )
        answer.raise_for_status()
        body = answer.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def reload(self) -> None:
        found = self.query(
            'mutation { reloadRepositoryLocation(repositoryLocationName: "qwen_assets") '
            "{ __typename ... on WorkspaceLocationEntry { loadStatus } } }"
        )
        assert found["reloadRepositoryLocation"]["loadStatus"] == "LOADED"

    def stale_partitions(self, asset: str) -> list[str]:
        """The partitions the UI shows stale (Dagster's own stale status)."""
        (node,) = self.query(
            "query($keys: [AssetKeyInput!]) { assetNodes(assetKeys: $keys) "
            "{ partitionKeys staleStatusByPartition } }",
            keys=[{"path": [asset]}],
        )["assetNodes"]
        statuses = zip(node["partitionKeys"], node["staleStatusByPartition"], strict=True)
        return [partition for partition, status in statuses if status != "FRESH"]

    def stale_assets(self, assets: list[str]) -> list[str]:
        nodes = self.query(
            "query($keys: [AssetKeyInput!]) { assetNodes(assetKeys: $keys) "
            "{ assetKey { path } staleStatus } }",
            keys=[{"path": [asset]} for asset in assets],
        )["assetNodes"]
        return sorted(n["assetKey"]["path"][0] for n in nodes if n["staleStatus"] != "FRESH")

    def runs(self) -> list[dict]:
        return self.query(
            "{ runsOrError(limit: 50) { ... on Runs { results { runId status startTime "
            "endTime tags { key value } } } } }"
        )["runsOrError"]["results"]

    def _sensor(self, name: str, fields: str) -> dict:
        return self.query(
            "query($name: String!) { sensorOrError(sensorSelector: {repositoryLocationName: "
            '"qwen_assets", repositoryName: "__repository__", sensorName: $name}) '
            f"{{ ... on Sensor {{ {fields} }} }} }}",
            name=name,
        )["sensorOrError"]

    def sensor_ticks(self, name: str = "rebuild_stale_assets") -> list[dict]:
        """The sensor's ticks, newest first: when, and why it skipped."""
        found = self._sensor(
            name, "sensorState { ticks(limit: 20) { timestamp status skipReason } }"
        )
        return found["sensorState"]["ticks"]

    def stop_sensor(self, name: str) -> None:
        """As the UI's toggle does."""
        sensor_id = self._sensor(name, "id")["id"]
        stopped = self.query(
            "mutation($id: String!) { stopSensor(id: $id) { __typename "
            "... on StopSensorMutationResult { instigationState { status } } } }",
            id=sensor_id,
        )["stopSensor"]
        assert stopped["instigationState"]["status"] == "STOPPED", stopped

    def launch(self, job: str, assets: list[str] | None = None) -> str:
        """Launch run on a job with no config (or on some of its assets: "Materialize
        selected"), as the UI's button does; the run's id."""
        launched = self.query(
            "mutation($params: ExecutionParams!) { launchRun(executionParams: $params) "
            "{ __typename ... on LaunchRunSuccess { run { runId } } "
            "... on PythonError { message } } }",
            params={
                "selector": {
                    "repositoryLocationName": "qwen_assets",
                    "repositoryName": "__repository__",
                    "jobName": job,
                    **({"assetSelection": [{"path": [name]} for name in assets]} if assets else {}),
                },
                "runConfigData": {},
            },
        )["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        return launched["run"]["runId"]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def project(small_built, server, small_archive, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A new small project (no database, no Dagster history) with a copy of the paid cache,
    whose builds may not wait on any lock; yields the environment its commands run in."""
    shutil.copyfile(small_built.cache, tmp_path / "cache.duckdb")
    raw = project_settings(tmp_path, server, small_archive)
    raw["corpus"].update(SMALL_CORPUS)
    raw["storage"]["lock_wait_seconds"] = 0
    raw["automation"] = {"sensor_interval_seconds": 5}
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(PACKAGE_DAGSTER_YAML, home / "dagster.yaml")
    environ = {
        **os.environ,
        "QWEN_ASSETS_SETTINGS": str(write_settings(tmp_path / "settings.toml", raw)),
        "DAGSTER_HOME": str(home),
        "DAGSTER_DISABLE_TELEMETRY": "yes",
    }
    environ.pop("SILICONFLOW_API_KEY", None)
    server.reset()
    yield environ
    server.release()


def build(environ: dict[str, str]) -> str:
    folder = Path(environ["QWEN_ASSETS_SETTINGS"]).with_name("commands")
    done = cli_process.run(["build"], environ, folder, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "busy" not in done.stdout + done.stderr
    return done.stdout


def edit(environ: dict[str, str], old: str, new: str) -> None:
    settings = Path(environ["QWEN_ASSETS_SETTINGS"])
    assert old in settings.read_text()
    settings.write_text(settings.read_text().replace(old, new))


@pytest.mark.long_running(seconds=120)
def test_people_query_through_a_cold_build_an_edit_and_a_sensor_run(
    project, server, small_built, tmp_path
):
    documents = small_built.documents()
    batch = small_built.settings().embedding.batch_size
    read_side = Path(project["QWEN_ASSETS_SETTINGS"]).with_name("warehouse.duckdb")
    stop = tmp_path / "stop-the-query-loop"
    loop = subprocess.Popen(
        [sys.executable, "-c", QUERY_LOOP, str(read_side), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ui: DagsterUI | None = None
    holder: subprocess.Popen | None = None
    try:
        # 1. A cold build, the loop waiting for the database to appear.
        build(project)
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(read_side)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        first = json.loads(holder.stdout.readline())
        assert sorted(first) == sorted(TASKS)

        # 2. An instruction edited, built from the command line, while both readers read.
        server.reset()
        edit(project, 'or neutral"', 'or neutral, and why"')
        output = build(project)
        assert "rebuild task_embeddings[sentiment]" in output
        assert len(server.received) == math.ceil(documents / batch)

        # 3. Another edited in a running `dg dev`: the sensor rebuilds it.
        ui = DagsterUI(project, tmp_path / "dg-dev.log")
        assert ui.stale_partitions("task_embeddings") == [], "fresh after the builds"
        launched_before = len(ui.runs())
        server.reset()
        server.hold()  # the sensor's run will wait on the API: the UI can be read meanwhile
        edit(project, "Identify the topic or theme of the given text", "Name its subject")
        ui.reload()
        wait_until(
            lambda: ui.stale_partitions("task_embeddings"),
            90,
            "the sensor records the changed prompt and the UI shows it stale",
        )
        assert ui.stale_partitions("task_embeddings") == ["topic"], "that partition only"
        # Dagster marks a map stale once its embeddings are rebuilt, not before (it does not
        # pass an input's staleness on): the sensor's run is held before that.
        assert ui.stale_partitions("umap_coordinates") == []
        assert wait_until(lambda: server.waiting, 60, "the sensor's run asks for vectors")
        server.release()
        wait_until(
            lambda: (
                len(ui.runs()) >= launched_before + 2
                and all(run["status"] in ("SUCCESS", "FAILURE") for run in ui.runs())
            ),
            240,
            "the sensor's runs finish",
        )
        runs = ui.runs()[: len(ui.runs()) - launched_before]
        assert {run["status"] for run in runs} == {"SUCCESS"}, (
            tmp_path / "dg-dev.log"
        ).read_text()[-3000:]
        assert all(
            {"key": "qwen_assets/trigger", "value": "rebuild_stale_assets sensor"} in run["tags"]
            for run in runs
        )
        assert len(server.received) == math.ceil(documents / batch), "exactly that task's texts"
        assert all("Name its subject" in text for text in server.texts_received)
        # The map and the site followed, and the UI now shows everything fresh.
        for asset in ["task_embeddings", "umap_coordinates"]:
            assert ui.stale_partitions(asset) == [], asset
        assert (
            ui.stale_assets(
                ["site_data", "task_quality", "map_clusters", "site_pages", "query_database"]
            )
            == []
        )

        # 4. A command-line build beside the live sensor: they take turns, nothing twice.
        server.reset()
        server.hold()
        edit(project, "Classify the given text as either toxic or not toxic", "Is it rude?")
        ui.reload()
        started = time.time()
        said = tmp_path / "cli-beside-the-sensor.log"
        cli = cli_process.start(["build"], project, said)
        wait_until(lambda: server.waiting, 120, "the command line's build asks for vectors")
        assert wait_until(
            lambda: [
                tick
                for tick in ui.sensor_ticks()
                if tick["timestamp"] > started
                and "qwen-assets build is running" in (tick["skipReason"] or "")
            ],
            90,
            "a sensor tick while the command line builds",
        ), "the sensor stood aside"
        server.release()
        assert cli.wait(timeout=300) == 0, said.read_text()
        built_at = time.time()
        wait_until(
            lambda: any(tick["timestamp"] > built_at for tick in ui.sensor_ticks()),
            90,
            "the next sensor tick",
        )
        spans = sorted((run["startTime"], run["endTime"]) for run in ui.runs())
        assert all(end <= following for (_, end), (following, _) in itertools.pairwise(spans)), (
            "no two runs at once"
        )
        assert all(run["status"] == "SUCCESS" for run in ui.runs())
        assert len(server.received) == math.ceil(documents / batch), "toxicity, embedded once"

        # 5. An edit the server answers wrongly (one vector for every text): the sensor's
        # run fails, and no site run follows it, tick after tick; what people read stays.
        site = Path(load_settings(project["QWEN_ASSETS_SETTINGS"]).site.output_dir) / "data.json"
        published = (site.read_bytes(), run_sql(read_side, FINAL_STATE))
        server.reset()
        server.faults.extend(Fault(same_vector=True) for _ in range(math.ceil(documents / batch)))
        launched_before = len(ui.runs())
        edit(project, "Is it rude?", "Is it rude, or merely blunt?")
        ui.reload()
        (failed,) = wait_until(
            lambda: [
                run
                for run in ui.runs()[: len(ui.runs()) - launched_before]
                if run["status"] == "FAILURE"
            ],
            120,
            "the sensor's run fails its check",
        )
        failed_at = time.time()
        refusals = wait_until(
            lambda: [
                tick
                for tick in ui.sensor_ticks()
                if tick["timestamp"] > failed_at
                and "failed: nothing after it" in (tick["skipReason"] or "")
            ][1:],
            90,
            "two sensor ticks after the failed run",
        )
        assert failed["runId"][:8] in refusals[0]["skipReason"]
        assert len(ui.runs()) == launched_before + 1, "no site run was queued behind it"
        assert (site.read_bytes(), run_sql(read_side, FINAL_STATE)) == published
        assert "dagster.yaml) in the current folder" not in (tmp_path / "dg-dev.log").read_text()

        # 6. The rebuild sensor off (the daily schedule's setup): an edit shows stale in the
        # UI within an interval of the reload (beside toxicity, whose rebuild failed, and
        # nothing else), and nothing is built.
        ui.stop_sensor("rebuild_stale_assets")
        launched_before = len(ui.runs())
        assert ui.stale_partitions("task_embeddings") == ["toxicity"], "its rebuild failed"
        edit(project, 'or neutral, and why"', 'or neutral, and how strongly"')
        ui.reload()
        wait_until(
            lambda: ui.stale_partitions("task_embeddings") == ["sentiment", "toxicity"],
            60,
            "the UI shows the edited partition stale with the rebuild sensor off",
        )
        observed_at = time.time()
        wait_until(
            lambda: any(
                t["timestamp"] > observed_at for t in ui.sensor_ticks("observe_task_instructions")
            ),
            60,
            "another observing tick",
        )
        assert ui.stale_partitions("task_embeddings") == ["sentiment", "toxicity"], "only"
        assert len(ui.runs()) == launched_before, "nothing was built"

        # 7. One action in the UI builds what is stale (the edit, and the failed rebuild,
        # the server healthy again): Launch run on the rebuild_stale job.
        server.reset()
        published = site.read_bytes()
        launched_run = ui.launch("rebuild_stale")
        wait_until(
            lambda: (
                len(ui.runs()) >= launched_before + 3
                and all(run["status"] in ("SUCCESS", "FAILURE") for run in ui.runs())
            ),
            240,
            "the job's run and the runs of its plan finish",
        )
        runs = ui.runs()[: len(ui.runs()) - launched_before]
        assert runs[-1]["runId"] == launched_run
        assert {run["status"] for run in runs} == {"SUCCESS"}, (
            tmp_path / "dg-dev.log"
        ).read_text()[-3000:]
        assert all(
            {"key": "qwen_assets/trigger", "value": "rebuild_stale job"} in run["tags"]
            for run in runs
        )
        asked = [
            "how strongly" if "how strongly" in texts[0] else "merely blunt"
            for texts in server.received
        ]
        assert all(("how strongly" in t) or ("merely blunt" in t) for t in server.texts_received)
        assert asked.count("how strongly") == math.ceil(documents / batch), "sentiment's texts"
        assert 1 <= asked.count("merely blunt") <= math.ceil(documents / batch), (
            "toxicity's, less what its failed run cached"
        )
        assert ui.stale_partitions("task_embeddings") == []
        assert site.read_bytes() != published, "and the site was published"
    except BaseException:
        if holder is not None:
            holder.kill()
        raise
    finally:
        if ui is not None:
            ui.stop()
        stop.touch()
        seen, errors = loop.communicate(timeout=60)

    # 5. The loop never saw a broken or mixed state, and saw the states come and go.
    summary = json.loads(seen or "{}") if seen else {"failures": [errors[-2000:]]}
    assert summary["failures"] == []
    assert summary["passes"] > 10
    final = run_sql(read_side, FINAL_STATE)
    assert len(summary["states"]) == 5, "cold build; sentiment, topic, toxicity, sentiment edits"
    assert list(final) in summary["states"], "and the last one"

    # 6. The held connection still sees the first state; a new one sees the edited vectors.
    holder.stdin.write("\n")
    holder.stdin.flush()
    later = json.loads(holder.stdout.readline())
    holder.wait(timeout=30)
    assert later["held"] == first, "a reader keeps the state it opened"
    changed = {task for task in TASKS if later["new"][task] != first[task]}
    assert changed == {"topic", "sentiment", "toxicity"}
