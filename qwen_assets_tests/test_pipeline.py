"""The assets end to end: shapes, the cache, exact staleness, automation and the schedule."""

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterRunStatus,
    build_run_status_sensor_context,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
)

from qwen_assets.cli import rebuild_stale
from qwen_assets.definitions import build_definitions
from qwen_assets.orchestration.runs import build_lock
from qwen_assets.orchestration.sources import source_versions
from qwen_assets.orchestration.stale import stale_plan
from qwen_assets.pipeline.embedding.identity import task_version
from qwen_assets.pipeline.projection import (
    EXACT_NEIGHBOURS_BELOW,
    align,
    exact_neighbours,
    umap_layout,
)
from qwen_assets.pipeline.site import read_payload
from qwen_assets.pipeline.storage import read_table
from qwen_assets.settings import load_settings
from qwen_assets.testing import project_settings, write_settings
from qwen_assets_tests.conftest import cli_on, failure_message
from qwen_assets_tests.test_definitions import STAGES

TASKS = ["default", "topic", "sentiment", "toxicity"]
# What follows the task partitions: the site's assets and the query views.
AFTER_THE_MAPS = {AssetKey(name) for name in STAGES["site"] | STAGES["query"]}


def test_every_task_has_a_unit_vector_per_document(built):
    frame = read_table(built.database, "SELECT task, doc_id, embedding FROM task_embeddings")
    assert frame.groupby("task").size().to_dict() == {task: 800 for task in TASKS}
    vectors = np.stack(frame["embedding"].to_numpy())
    assert vectors.shape == (3200, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    kind = read_table(
        built.database,
        "SELECT data_type FROM information_schema.columns WHERE table_name='task_embeddings' AND column_name='embedding'",
    )
    assert kind.iloc[0, 0] == "FLOAT[384]"


def test_stored_vectors_answer_cosine_queries_without_casts(built):
    nearest = read_table(
        built.database,
        """SELECT a.doc_id AS query, b.doc_id AS hit FROM task_embeddings a JOIN task_embeddings b USING (task)
           WHERE a.task = 'topic' QUALIFY row_number() OVER (PARTITION BY a.doc_id
           ORDER BY array_cosine_similarity(a.embedding, b.embedding) DESC) = 1""",
    )
    # every document is its own nearest neighbour (exact duplicates aside)
    assert (nearest["query"] == nearest["hit"]).mean() > 0.99


def test_instructions_reshape_the_space(built):
    frame = read_table(
        built.database, "SELECT task, embedding FROM task_embeddings ORDER BY task, doc_id"
    )
    by_task = {
        task: np.stack(group["embedding"].to_numpy()) for task, group in frame.groupby("task")
    }
    same_doc = (by_task["default"] * by_task["sentiment"]).sum(axis=1)
    assert same_doc.mean() < 0.99, "an instruction moves the vectors"


def test_coordinates_are_finite_aligned_and_reproducible(built):
    coordinates = read_table(built.database, "SELECT * FROM umap_coordinates")
    assert coordinates.groupby("task").size().to_dict() == {task: 800 for task in TASKS}
    assert np.isfinite(coordinates[["x", "y", "x_aligned", "y_aligned"]].to_numpy()).all()
    default = coordinates[coordinates.task == "default"]
    assert np.allclose(
        default[["x", "y"]].to_numpy(), default[["x_aligned", "y_aligned"]].to_numpy(), atol=1e-6
    )
    settings = load_settings(built.settings_path)
    stored = read_table(
        built.database,
        "SELECT e.embedding, c.x, c.y FROM task_embeddings e JOIN newsgroups_sample s USING (doc_id) "
        "JOIN umap_coordinates c ON c.task = e.task AND c.doc_id = e.doc_id "
        "WHERE e.task = 'topic' ORDER BY s.position",
    )
    again = umap_layout(np.stack(stored["embedding"].to_numpy()), settings.umap)
    assert np.allclose(again, stored[["x", "y"]].to_numpy(), atol=1e-4), (
        "the stored map is the one its vectors and settings give"
    )


def test_a_small_map_gets_exact_neighbours_and_a_large_one_umaps_own_search(built):
    from scipy.spatial.distance import cdist

    settings = load_settings(built.settings_path).umap
    vectors = np.stack(
        read_table(
            built.database,
            "SELECT embedding FROM task_embeddings WHERE task = 'topic' ORDER BY doc_id",
        )["embedding"].to_numpy()
    )
    indices, distances, search_index = exact_neighbours(vectors, settings)
    assert indices.shape == distances.shape == (len(vectors), settings.n_neighbors)
    assert search_index is None
    # A post is its own nearest neighbour (the sample's one duplicated text may swap with its
    # twin), and its farthest neighbour is as far as a full scan of the map says.
    assert (indices[:, 0] == np.arange(len(vectors))).mean() > 0.99
    scan = np.sort(cdist(vectors, vectors, settings.metric), axis=1)
    assert np.allclose(distances[:, -1], scan[:, settings.n_neighbors - 1], atol=1e-5)
    large = np.zeros((EXACT_NEIGHBOURS_BELOW, 2))
    assert exact_neighbours(large, settings) == (None, None, None)


def test_alignment_undoes_a_rotation_scale_and_shift():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(200, 2))
    angle = 1.1
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = 3.0 * reference @ rotation + [5, -2]
    result = align(moved, reference)
    assert np.allclose(result.coordinates, reference, atol=1e-9)
    assert result.disparity < 1e-12


@pytest.fixture
def cold_project(small_built, server, small_archive, tmp_path: Path):
    """A new project with its own Dagster instance and no database, sharing a copy of the small
    built project's paid embedding cache."""
    shutil.copyfile(small_built.cache, tmp_path / "cache.duckdb")
    raw = project_settings(tmp_path, server, small_archive)
    raw["corpus"] = small_built.raw["corpus"]
    settings_file = write_settings(tmp_path / "settings.toml", raw)
    with instance_for_test() as instance:
        yield settings_file, instance


def edit(settings_file: Path, old: str, new: str) -> None:
    text = settings_file.read_text()
    assert old in text
    settings_file.write_text(text.replace(old, new))


def test_the_classifier_figures_are_scikit_learns_on_the_stored_vectors(small_built):
    """task_quality's linear probe, V-measure and CKA, recomputed with scikit-learn and numpy
    straight from the vectors and groups the database holds."""
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import v_measure_score
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    quality = read_table(small_built.database, "SELECT * FROM task_quality").set_index("task")
    stored = read_table(
        small_built.database,
        """SELECT e.task, e.embedding, s.category FROM task_embeddings e
           JOIN newsgroups_sample s USING (doc_id) ORDER BY e.task, s.position""",
    )
    spaces = {
        task: (np.stack(rows["embedding"].to_numpy()), rows["category"].to_numpy())
        for task, rows in stored.groupby("task")
    }
    default = spaces["default"][0].astype(np.float64)
    for task, (vectors, groups) in spaces.items():
        folds = StratifiedKFold(5, shuffle=True, random_state=0)
        probe = cross_val_score(LogisticRegression(max_iter=2000), vectors, groups, cv=folds)
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        clusters = KMeans(len(set(groups)), n_init=10, random_state=0).fit_predict(unit)
        x = vectors - vectors.mean(axis=0)
        y = default - default.mean(axis=0)
        cka = np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))
        figures = quality.loc[task]
        assert figures["probe_accuracy"] == pytest.approx(probe.mean(), abs=1e-3), task
        assert figures["v_measure"] == pytest.approx(v_measure_score(groups, clusters), abs=1e-3)
        assert figures["cka_with_reference"] == pytest.approx(cka, abs=1e-3), task
    assert quality.loc["default", "cka_with_reference"] == pytest.approx(1.0)


def test_each_task_records_how_the_server_met_its_requests(small_built):
    """What the UI shows a user whose build was slow: the in-flight limits used, the
    latencies and the retries, on each partition of task_embeddings."""
    records = small_built.instance.fetch_materializations(
        AssetKey("task_embeddings"), limit=100
    ).records
    metadata = {record.partition_key: record.asset_materialization.metadata for record in records}
    assert set(metadata) == set(TASKS)
    most = small_built.settings().embedding.http.max_in_flight
    for task, values in metadata.items():
        limits = [int(limit) for limit in values["in_flight_limits"].value.split(" → ")]
        assert limits[0] == most and all(1 <= limit <= most for limit in limits), (task, limits)
        p50, p95 = values["latency_p50_seconds"].value, values["latency_p95_seconds"].value
        assert 0 < p50 <= p95, (task, p50, p95)
        assert values["timeouts"].value <= values["retries"].value, task


def test_a_slow_server_is_learned_once_a_run_not_once_a_task(project_copy, server):
    """A server of one worker, slower per batch than the client's timeout: the first task
    meets it (a timeout, a longer retry), and the three after it start from what the first
    learned, so none of them times out and the server computes at most the first task's
    given-up requests for nothing."""

    def edit(raw: dict) -> None:
        raw["embedding"]["http"]["timeout_seconds"] = 0.5
        for task in TASKS:
            raw["tasks"][task]["instruction"] += " Be brief."

    project = project_copy(edit)
    server.reset()
    server.workers, server.seconds_per_text = 1, 0.7 / 32  # 0.7 s a batch of 32
    try:
        report = rebuild_stale(project.instance, project.settings(), log=lambda line: None)
        server.wait_idle()
    finally:
        server.workers, server.seconds_per_text = None, 0.0
    assert report.succeeded, report.failure
    timeouts = {}
    for record in project.instance.fetch_materializations(
        AssetKey("task_embeddings"), limit=100
    ).records:
        timeouts.setdefault(record.partition_key, record.asset_materialization.metadata)
    timeouts = {task: values["timeouts"].value for task, values in timeouts.items()}
    first, *later = TASKS  # the order the run embeds them in
    assert timeouts[first] >= 1 and [timeouts[task] for task in later] == [0, 0, 0], timeouts
    assert server.abandoned <= timeouts[first], "at most the first task's given-up requests"


def test_only_what_is_stale_is_rebuilt(cold_project, small_built, server):
    settings_file, instance = cold_project
    documents = small_built.documents()
    server.reset()
    report = rebuild_stale(instance, load_settings(settings_file), log=lambda line: None)
    assert report.succeeded
    assert server.received == [], (
        "a full build from nothing with a warm cache asks the API for nothing"
    )

    settings = load_settings(settings_file)
    assert stale_plan(build_definitions(settings), instance, source_versions(settings)).empty
    again = rebuild_stale(instance, settings, log=lambda line: None)
    assert again.plan.empty and again.run_ids == []

    edit(settings_file, 'or neutral"', 'or neutral, and why"')
    server.reset()
    report = rebuild_stale(instance, load_settings(settings_file), log=lambda line: None)
    assert report.changed_instructions == ["sentiment"]
    assert report.plan.by_task == {
        "sentiment": [AssetKey("task_embeddings"), AssetKey("umap_coordinates")]
    }
    assert not report.plan.before
    batch = load_settings(settings_file).embedding.batch_size
    assert len(server.received) == math.ceil(documents / batch)

    edit(settings_file, "n_neighbors = 15", "n_neighbors = 12")
    server.reset()
    report = rebuild_stale(instance, load_settings(settings_file), log=lambda line: None)
    assert report.plan.by_task == {task: [AssetKey("umap_coordinates")] for task in TASKS}
    assert all(
        "new code version" in reason
        for target, reason in report.plan.reasons.items()
        if target.startswith("umap_coordinates")
    )
    assert set(report.plan.after) == AFTER_THE_MAPS
    assert server.received == [], "a UMAP setting never re-embeds"


def test_tasks_added_removed_resized_and_a_new_sample_through_the_planner(project_copy, server):
    """Each settings edit people make, built for real: exactly what it makes stale is rebuilt,
    and only texts never embedded are paid for."""
    project = project_copy()
    documents = project.documents()
    batches = math.ceil(documents / project.settings().embedding.batch_size)
    maps = [AssetKey("task_embeddings"), AssetKey("umap_coordinates")]

    def rebuild(edit) -> tuple:
        edit(project.raw)
        write_settings(project.settings_path, project.raw)
        server.reset()
        report = rebuild_stale(project.instance, project.settings(), log=lambda line: None)
        assert report.succeeded, report.failure
        return report, len(server.received)

    def tasks_in(table: str) -> dict[str, int]:
        counted = read_table(project.database, f"SELECT task, count(*) n FROM {table} GROUP BY 1")
        return dict(zip(counted["task"], counted["n"], strict=True))

    emotion = {"instruction": "Classify the emotion expressed in the given text"}
    report, requests = rebuild(lambda raw: raw["tasks"].update(emotion=emotion))
    assert report.plan.by_task == {"emotion": maps} and requests == batches
    assert tasks_in("task_embeddings") == dict.fromkeys([*TASKS, "emotion"], documents)

    report, requests = rebuild(lambda raw: raw["tasks"].pop("toxicity"))
    assert report.plan.by_task == {} and requests == 0, "removing a task embeds nothing"
    kept = dict.fromkeys(["default", "topic", "sentiment", "emotion"], documents)
    assert {task["name"] for task in read_payload(project.root / "site")["tasks"]} == set(kept)

    report, requests = rebuild(lambda raw: raw["embedding"].update(dimensions=128))
    assert report.plan.by_task == dict.fromkeys(kept, maps)
    assert requests == len(kept) * batches, "a new size is a new vector for every prompt"
    assert len(report.run_ids) == len(report.plan.runs()), "each planned run launched once"
    assert len([run for run in report.plan.runs() if run.tasks]) == 1, "all tasks in one run"
    # The removed task's rows went with the next write to the tables.
    assert tasks_in("task_embeddings") == tasks_in("umap_coordinates") == kept

    report, requests = rebuild(lambda raw: raw["corpus"].update(per_category=30))
    assert AssetKey("newsgroups_sample") in report.plan.before
    assert set(report.plan.by_task) == set(kept)
    assert project.documents() == 30 * len(project.raw["corpus"]["categories"])
    assert requests == 0, "a smaller sample of the same posts: every vector is cached"


def test_switching_the_local_runtime_makes_exactly_the_embeddings_stale(project_copy):
    project = project_copy()
    settings_file, instance = project.settings_path, project.instance

    def plan():
        settings = load_settings(settings_file)
        return stale_plan(build_definitions(settings), instance, source_versions(settings))

    edit(settings_file, 'backend = "http"', 'backend = "local"')
    assert plan().empty, "the model's own float32 vectors, from the API or in process, are one"
    edit(settings_file, 'runtime = "torch"', 'runtime = "onnx-int8"')
    switched = plan()
    assert switched.by_task == {
        task: [AssetKey("task_embeddings"), AssetKey("umap_coordinates")] for task in TASKS
    }
    assert set(switched.after) == AFTER_THE_MAPS and not switched.before


def sensor_tick(settings_file: Path, instance):
    """One tick of the rebuild sensor, on definitions freshly loaded from the settings file."""
    defs = build_definitions(load_settings(settings_file))
    sensor = defs.resolve_sensor_def("rebuild_stale_assets")
    with build_sensor_context(instance=instance, definitions=defs) as context:
        return sensor.evaluate_tick(context)


def execute(request, settings_file: Path, instance):
    """Run what a trigger requested, in this process, as the daemon would launch it."""
    job = build_definitions(load_settings(settings_file)).resolve_job_def("build_assets")
    return job.execute_in_process(
        instance=instance,
        asset_selection=request.asset_selection,
        partition_key=request.partition_key,
        tags=request.tags,
        raise_on_error=False,
    )


def test_the_sensor_builds_an_edit_a_run_at_a_time_and_waits_for_a_run_in_progress(
    project_copy,
):
    """The sensor plans the way `qwen-assets build` does: the plan's first run, then, once it
    has succeeded, the plan made again (here: the site)."""
    project = project_copy()
    settings_file, instance = project.settings_path, project.instance
    quiet = sensor_tick(settings_file, instance)
    assert quiet.run_requests == [] and quiet.skip_message == "everything is fresh"

    edit(
        settings_file,
        "Identify the topic or theme of the given text",
        "Name the subject of the text",
    )
    after_edit = sensor_tick(settings_file, instance)
    requested = [(r.partition_key, r.asset_selection) for r in after_edit.run_requests]
    assert requested == [("topic", [AssetKey("task_embeddings"), AssetKey("umap_coordinates")])]
    assert [str(event.partition) for event in after_edit.asset_events] == ["topic"], (
        "the changed prompt is recorded for the UI's lineage"
    )
    assert execute(after_edit.run_requests[0], settings_file, instance).success
    site = sensor_tick(settings_file, instance).run_requests
    assert [r.partition_key for r in site] == [None]
    assert set(site[0].asset_selection) == AFTER_THE_MAPS, "then the site, planned again"

    # A run is in progress in a live process (this one): the next tick waits for it.
    job = build_definitions(load_settings(settings_file)).resolve_job_def("build_assets")
    running = instance.create_run_for_job(job, status=DagsterRunStatus.STARTED)
    instance.report_engine_event("started by the test", running)
    waiting = sensor_tick(settings_file, instance)
    assert waiting.run_requests == []
    assert waiting.skip_message.startswith(f"run {running.run_id[:8]} is started")


def test_the_observing_sensor_records_exactly_the_edited_prompt_and_builds_nothing(
    project_copy,
):
    """With the rebuild sensor off, this is what makes the UI show the edited partition stale."""
    project = project_copy()
    settings_file, instance = project.settings_path, project.instance

    def observe():
        defs = build_definitions(load_settings(settings_file))
        sensor = defs.resolve_sensor_def("observe_task_instructions")
        with build_sensor_context(instance=instance, definitions=defs) as context:
            return sensor.evaluate_tick(context)

    assert observe().skip_message == "no prompt or corpus file changed"
    edit(settings_file, "Classify the given text as either toxic or not toxic", "Is it rude?")
    seen = observe()
    assert [str(event.partition) for event in seen.asset_events] == ["toxicity"]
    assert seen.run_requests == []


def test_a_sensor_run_that_fails_its_check_keeps_the_site_out_until_the_settings_change(
    project_copy, server, monkeypatch
):
    """A blocking check that fails on a rebuilt partition: the sensor requests nothing after
    it (no site run is waiting behind it), tick after tick, until an edit gives the build a
    new chance; the published site and the read side stay as they were."""
    import qwen_assets.defs.embedding_assets as embedding_assets

    project = project_copy()
    settings_file, instance = project.settings_path, project.instance
    published = {
        path: path.read_bytes()
        for path in [
            Path(project.settings().site.output_dir) / "data.json",
            Path(project.settings().storage.database),
        ]
    }
    edit(settings_file, "Identify the topic or theme of the given text", "Name its subject")
    first = sensor_tick(settings_file, instance).run_requests
    monkeypatch.setattr(
        embedding_assets, "embedding_problems", lambda *arguments: ["injected: all the same"]
    )
    failed = execute(first[0], settings_file, instance)
    assert failed.run_id and not failed.success
    monkeypatch.undo()  # the rule would pass now: only the settings decide when to try again
    for _ in range(2):
        tick = sensor_tick(settings_file, instance)
        assert tick.run_requests == []
        assert tick.skip_message.startswith(
            f"run {failed.run_id[:8]} (task_embeddings, umap_coordinates [topic]) failed"
        ), tick.skip_message
    assert {path: path.read_bytes() for path in published} == published, "nothing was published"

    server.reset()
    edit(settings_file, "Name its subject", "Name the subject of the text")
    again = sensor_tick(settings_file, instance).run_requests
    assert [r.partition_key for r in again] == ["topic"], "an edit: the build goes on"


def schedule_tick(settings_file: Path, instance):
    """One tick of the daily schedule, on definitions freshly loaded from the settings file."""
    defs = build_definitions(load_settings(settings_file))
    schedule = defs.resolve_schedule_def("daily_rebuild")
    with build_schedule_context(
        instance=instance, repository_def=defs.get_repository_def()
    ) as context:
        return schedule.evaluate_tick(context)


def continuation_tick(settings_file: Path, instance, result):
    """What continue_rebuild does when the run ``result`` ended."""
    defs = build_definitions(load_settings(settings_file))
    sensor = defs.resolve_sensor_def("continue_rebuild")
    (ended,) = [
        event
        for event in result.all_events
        if event.event_type in (DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE)
    ]
    context = build_run_status_sensor_context(
        sensor_name="continue_rebuild",
        dagster_event=ended,
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(result.run_id),
    )
    return sensor(context)


def launch_rebuild_stale(settings_file: Path, instance):
    """A run of the rebuild_stale job, as the UI's Launch run starts it."""
    job = build_definitions(load_settings(settings_file)).resolve_job_def("rebuild_stale")
    return job.execute_in_process(instance=instance, raise_on_error=False)


def logged(instance, run_id: str) -> list[str]:
    return [entry.user_message for entry in instance.all_logs(run_id)]


def sensed(settings_file: Path, instance):
    """The rebuild sensor's tick: its run request, or why it requested nothing."""
    tick = sensor_tick(settings_file, instance)
    (request,) = tick.run_requests or [None]
    return request or tick.skip_message


def failure_of(instance, run_id: str) -> str:
    """Why the run's step failed, as the UI shows it on the failed step."""
    (failed,) = instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE)
    return failed.dagster_event.step_failure_data.error.message


def scheduled(settings_file: Path, instance):
    """The schedule's tick: its run request, or why it requested nothing."""
    tick = schedule_tick(settings_file, instance)
    (request,) = tick.run_requests or [None]
    return request or tick.skip_message


def launched(settings_file: Path, instance):
    """The rebuild_stale job's run, then the continuation's answer to it."""
    ran = launch_rebuild_stale(settings_file, instance)
    assert ran.success, logged(instance, ran.run_id)
    following = continuation_tick(settings_file, instance, ran)
    return following if hasattr(following, "partition_key") else following.skip_message


@pytest.mark.parametrize(
    ("start", "trigger", "quiet"),
    [
        (sensed, "rebuild_stale_assets sensor", "everything is fresh"),
        (scheduled, "daily_rebuild schedule", "everything is fresh"),
        (launched, "rebuild_stale job", "the rebuild_stale job's build is done"),
    ],
    ids=["the rebuild sensor", "the daily schedule", "the rebuild_stale job"],
)
def test_a_plan_is_carried_on_a_run_at_a_time_whichever_trigger_started_it(
    project_copy, start, trigger, quiet
):
    """The three ways to build what is stale: the rebuild sensor, the daily schedule, and the
    job a person launches from the UI. Each starts with the plan's first run (the edited task
    only), and continue_rebuild launches the rest as soon as it has succeeded, not a sensor
    interval later."""
    project = project_copy()
    settings_file, instance = project.settings_path, project.instance
    assert start(settings_file, instance) == quiet, "nothing is stale: nothing is requested"

    edit(
        settings_file, "Classify the given text as either toxic or not toxic", "Is this text rude?"
    )
    first = start(settings_file, instance)
    assert (first.partition_key, first.asset_selection) == (
        "toxicity",
        [AssetKey("task_embeddings"), AssetKey("umap_coordinates")],
    ), "the edited task first"
    assert first.tags["qwen_assets/trigger"] == trigger
    ran = execute(first, settings_file, instance)
    assert ran.success
    following = continuation_tick(settings_file, instance, ran)
    assert following.partition_key is None and set(following.asset_selection) == AFTER_THE_MAPS
    assert following.tags["qwen_assets/trigger"] == trigger
    done = execute(following, settings_file, instance)
    assert done.success
    assert continuation_tick(settings_file, instance, done).skip_message == (
        f"the {trigger}'s build is done"
    )


def test_the_rebuild_stale_job_says_what_it_will_build_and_runs_with_no_config(project_copy):
    """What a person sees in the job's run log: the plan, by run."""
    project = project_copy()
    settings_file, instance = project.settings_path, project.instance
    ran = launch_rebuild_stale(settings_file, instance)
    assert "everything is fresh: nothing to build" in logged(instance, ran.run_id)
    edit(settings_file, "positive, negative, or neutral", "positive, negative or neutral")
    ran = launch_rebuild_stale(settings_file, instance)
    (plan,) = [line for line in logged(instance, ran.run_id) if "continue_rebuild" in line]
    assert plan.startswith("continue_rebuild launches 2 run(s), one after another:"), plan
    assert "[sentiment]" in plan and "[topic]" not in plan, plan


def test_the_schedule_the_sensor_and_the_job_stand_aside_while_a_build_holds_its_lock(
    project_copy,
):
    """While `qwen-assets build` holds its lock, neither the schedule nor the sensor requests
    anything, and each says why, and the rebuild_stale job fails saying when to launch it
    again; once it lets go they plan the edit."""
    project = project_copy()
    settings_file, instance = project.settings_path, project.instance
    edit(
        settings_file, "Classify the given text as either toxic or not toxic", "Is this text rude?"
    )

    def ticks() -> list:
        return [schedule_tick(settings_file, instance), sensor_tick(settings_file, instance)]

    with build_lock(instance):  # what a `qwen-assets build` holds while it builds
        for tick in ticks():
            assert tick.run_requests == []
            assert tick.skip_message.startswith("a qwen-assets build is running")
        refused = launch_rebuild_stale(settings_file, instance)
        assert not refused.success
        assert "a qwen-assets build is running: launch rebuild_stale again once it is done" in (
            failure_of(instance, refused.run_id)
        )

    for tick in ticks():
        assert tick.run_requests[0].partition_key == "toxicity"


def materialization_runs(instance, asset: str) -> dict[str, str]:
    """partition -> run id of its latest materialization."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset)), limit=100
    ).records
    runs: dict[str, str] = {}
    for record in records:  # newest first
        runs.setdefault(record.partition_key, record.run_id)
    return runs


def test_a_cold_build_backfills_every_task_in_a_single_run(built):
    embeddings = materialization_runs(built.instance, "task_embeddings")
    coordinates = materialization_runs(built.instance, "umap_coordinates")
    assert set(embeddings) == set(coordinates) == set(TASKS)
    assert len(set(embeddings.values()) | set(coordinates.values())) == 1, (
        "all partitions of both assets are built in one run"
    )
    runs = built.instance.get_runs()
    assert len(runs) == 3, "the corpus, then one run for every task, then the site"
    assert [run.tags.get("dagster/asset_partition_range_start") for run in runs].count(
        TASKS[0]
    ) == 1


def test_a_new_embedding_size_from_one_partition_is_refused_and_all_together_succeed(
    project_copy,
):
    """A single-partition materialization (as from the UI) never strands other partitions'
    rows; the whole asset in one run rebuilds the table in the new shape."""
    project = project_copy(lambda raw: raw["embedding"].update(dimensions=128))
    settings, instance = project.settings(), project.instance
    documents = project.documents()
    job = build_definitions(settings).resolve_job_def("build_assets")
    count = "SELECT task, count(*) AS n, any_value(typeof(embedding)) AS kind FROM task_embeddings GROUP BY task ORDER BY task"
    before = read_table(settings.storage.build_database, count)
    materialized = len(instance.fetch_materializations(AssetKey("task_embeddings"), 100).records)
    one = job.execute_in_process(
        instance=instance,
        partition_key="topic",
        asset_selection=[AssetKey("task_embeddings")],
        raise_on_error=False,
    )
    assert not one.success
    message = failure_message(one)
    assert "materialize all partitions of task_embeddings in one run" in message
    assert "default, sentiment, toxicity" in message, "it names what to rebuild"
    assert (
        len(instance.fetch_materializations(AssetKey("task_embeddings"), 100).records)
        == materialized
    ), "no materialization recorded"
    assert read_table(settings.storage.build_database, count).equals(before), "nothing written"

    every = job.execute_in_process(
        instance=instance,
        asset_selection=[AssetKey("task_embeddings")],
        tags={
            "dagster/asset_partition_range_start": TASKS[0],
            "dagster/asset_partition_range_end": TASKS[-1],
        },
        raise_on_error=False,
    )
    assert every.success
    stored = read_table(settings.storage.build_database, count)
    assert stored.to_dict("records") == [
        {"task": task, "n": documents, "kind": "FLOAT[128]"} for task in sorted(TASKS)
    ]


def test_a_map_built_before_its_embeddings_names_the_partition_to_build(project_copy):
    emotion = {"instruction": "Classify the emotion expressed in the given text"}
    project = project_copy(lambda raw: raw["tasks"].update(emotion=emotion))
    job = build_definitions(project.settings()).resolve_job_def("build_assets")
    result = job.execute_in_process(
        instance=project.instance,
        partition_key="emotion",
        asset_selection=[AssetKey("umap_coordinates")],
        raise_on_error=False,
    )
    assert not result.success
    assert (
        f"task_embeddings[emotion] has 0 rows for the {project.documents()} sample documents: "
        "materialize task_embeddings[emotion] first" in failure_message(result)
    )


def test_a_dry_run_plans_the_edit_and_writes_nothing(project_copy, tmp_path):
    project = project_copy(lambda raw: raw["site"].update(output_dir=str(tmp_path / "site")))
    settings_file, instance = project.settings_path, project.instance
    settings = load_settings(settings_file)
    databases = [Path(settings.storage.database), Path(settings.storage.build_database)]

    def state():
        observations = instance.fetch_observations(AssetKey("task_instructions"), limit=100)
        return (
            [run.run_id for run in instance.get_runs()],
            len(observations.records),
            [(path.stat().st_mtime_ns, path.read_bytes()) for path in databases],
        )

    edit(settings_file, 'or neutral"', 'or neutral, and why"')
    before = state()
    lines: list[str] = []
    dry = rebuild_stale(instance, load_settings(settings_file), dry_run=True, log=lines.append)
    assert state() == before, "a dry run writes nothing: no run, no observation, no table"
    assert dry.changed_instructions == ["sentiment"]
    assert dry.plan.by_task == {
        "sentiment": [AssetKey("task_embeddings"), AssetKey("umap_coordinates")]
    }
    assert "rebuild task_embeddings[sentiment]: task_instructions[sentiment] changed" in lines
    assert dry.run_ids == []
    real = rebuild_stale(instance, load_settings(settings_file), log=lambda line: None)
    assert real.plan.by_task == dry.plan.by_task, "the build does what the dry run said"


def test_site_builds_records_the_payload_on_disk(built):
    import hashlib

    settings = load_settings(built.settings_path)
    (build,) = read_table(built.database, "SELECT * FROM site_builds").to_dict("records")
    payload = (built.root / "site" / "data.json").read_bytes()
    assert build["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert build["payload_bytes"] == len(payload)
    assert list(build["tasks"]) == TASKS
    assert dict(build["task_versions"]) == {task: task_version(settings, task) for task in TASKS}
    assert build["documents"] == 800


def test_document_properties_sit_next_to_the_embeddings(built):
    properties = read_table(
        built.database,
        "SELECT p.* FROM document_properties p JOIN newsgroups_sample s USING (doc_id) "
        "ORDER BY s.position",
    )
    sample = read_table(built.database, "SELECT text FROM newsgroups_sample ORDER BY position")
    assert len(properties) == 800
    assert properties["length"].tolist() == sample["text"].str.len().tolist()
    assert properties["sentiment"].between(-1, 1).all()
    assert properties["hostility"].between(0, 1).all()
    assert properties["sentiment"].std() > 0.1, "posts differ in tone"


def test_each_targeted_task_is_measured_against_the_default_on_its_target(built):
    from qwen_assets.pipeline.site import read_payload

    quality = read_table(built.database, "SELECT * FROM task_quality").set_index("task")
    for name in ["category", "sentiment", "hostility", "length"]:
        assert {f"predicts_{name}", f"predicts_{name}_map"} <= set(quality.columns)
    assert pd.isna(quality.loc["default", "headline"]), "no headline without a target"
    for task, target in [
        ("topic", "category"),
        ("sentiment", "sentiment"),
        ("toxicity", "hostility"),
    ]:
        figure = quality.loc[task, f"predicts_{target}"]
        reference = quality.loc["default", f"predicts_{target}"]
        assert quality.loc[task, "target"] == target
        assert f"{figure:.3f} against {reference:.3f}" in quality.loc[task, "headline"]
    # the category figure is the k-NN accuracy the quality panel has always shown
    assert (quality["predicts_category"] == quality["knn_accuracy"]).all()
    payload = read_payload(built.root / "site")
    assert set(payload["documents"]["properties"]) == {"sentiment", "hostility", "length"}
    shown = {task["name"]: task["headline"] for task in payload["tasks"] if task["headline"]}
    assert shown == quality["headline"].dropna().to_dict(), "the site says what the table holds"


def test_map_clusters_hold_tight_groups_of_the_map_that_the_payload_draws(built):
    clusters = read_table(built.database, "SELECT * FROM map_clusters")
    places = read_table(
        built.database, "SELECT task, doc_id, x_aligned AS x, y_aligned AS y FROM umap_coordinates"
    ).set_index(["task", "doc_id"])
    payload = json.loads((built.root / "site" / "data.json").read_text())
    ids = payload["documents"]["id"]
    assert set(clusters["task"]) == set(TASKS), "every map has labels"
    for task in payload["tasks"]:
        rows = clusters[clusters["task"] == task["name"]]
        members = [doc_id for doc_ids in rows["doc_ids"] for doc_id in doc_ids]
        assert len(members) == len(set(members)), "a post is in one cluster at most"
        assert list(rows["size"]) == [len(doc_ids) for doc_ids in rows["doc_ids"]]
        drawn = {
            ids[doc]: number for doc, number in enumerate(task["clusters"]["member"]) if number >= 0
        }
        assert drawn == {
            doc_id: row.cluster for row in rows.itertuples() for doc_id in row.doc_ids
        }, "the page draws the stored clusters"
        spread = places.loc[task["name"]][["x", "y"]].to_numpy().std(axis=0).mean()
        for row in rows.itertuples():
            points = places.loc[task["name"]].loc[list(row.doc_ids)][["x", "y"]].to_numpy()
            assert points.std(axis=0).mean() < spread, f"{row.label}: tighter than the map"
            assert row.label == " · ".join(row.words) and len(row.words) > 0


def test_a_project_from_before_the_build_database_moves_over_without_paying_again(
    project_copy, server
):
    """A project built by a release that kept its tables in the database people query (no
    build database, no query_database asset) starts its build database from a copy of it:
    nothing is embedded or mapped again, and the database people query is published anew."""
    project = project_copy()
    Path(project.build_database).unlink()
    project.instance.wipe_assets([AssetKey("query_database")])
    lines: list[str] = []
    server.reset()
    report = rebuild_stale(project.instance, project.settings(), log=lines.append)
    assert report.succeeded, report.failure
    assert report.plan.runs()[0].keys == [AssetKey("query_database")]
    assert len(report.plan.runs()) == 1 and server.received == []
    assert Path(project.build_database).exists()
    assert read_table(project.database, "SELECT count(*) FROM task_embeddings").iloc[0, 0] == (
        4 * project.documents()
    )


def test_one_edited_instruction_on_the_real_sample_costs_exactly_its_batches(
    project_copy, built, server
):
    """The README's figure: one edited instruction on the 800-post sample is ceil(800/32) =
    25 requests, all for that task's prompts, and nothing else is embedded."""
    project = project_copy(
        lambda raw: raw["tasks"]["topic"].update(instruction="Name the subject of the post"),
        of=built,
    )
    server.reset()
    report = rebuild_stale(project.instance, project.settings(), log=lambda line: None)
    assert report.succeeded, report.failure
    batch = project.settings().embedding.batch_size
    assert len(server.received) == math.ceil(built.documents() / batch) == 25
    assert all(
        text.startswith("Instruct: Name the subject of the post") for text in server.texts_received
    )


def test_the_command_line_reports_each_quarter_and_verbose_adds_dagsters_lines(
    project_copy, server, monkeypatch, capsys
):
    """Off a terminal, `qwen-assets build` says why it rebuilds and prints a line per quarter
    of each task's texts; Dagster's own log lines go to the log file, and to the screen only
    with `--verbose`."""

    def edit(raw: dict) -> None:
        raw["tasks"]["topic"]["instruction"] = "Name the subject of the given post"

    project = project_copy(edit)
    monkeypatch.setenv("DAGSTER_HOME", str(project.home))
    cli = cli_on(project, monkeypatch, capsys)
    documents = project.documents()

    server.reset()
    plain = cli("build")
    assert "task_embeddings[topic]" in plain
    progress = [
        (label, int(done), int(total))
        for label, done, total in re.findall(r"embedding (\S+): (\d+)/(\d+) texts", plain)
    ]
    assert {total for _, _, total in progress} == {documents}, plain
    quarters = [4 * done // total for _, done, total in progress]
    assert quarters == sorted(set(quarters)) and quarters[-1] == 4, "one line per quarter"
    assert len(server.received) == math.ceil(documents / project.settings().embedding.batch_size)
    assert "STEP_START" not in plain + cli.err

    project.raw["tasks"]["sentiment"]["instruction"] = "Say how the writer feels"
    write_settings(project.settings_path, project.raw)
    verbose = cli("build", "--verbose")
    assert "task_embeddings[sentiment]" in verbose
    assert "STEP_START" in verbose + cli.err, "Dagster's own lines"
