"""Ordinary faults that must lose nothing and publish nothing stale: a step that stops half
way, a wrong answer from the API, settings that point two things at one file, a folder that
holds someone's files. Each test injects the fault for real (the loopback server, a failing
write, a file in the way) on a copy of the small built project."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from dagster import AssetKey, AssetRecordsFilter

from qwen_assets.cli import rebuild_stale
from qwen_assets.definitions import build_definitions
from qwen_assets.errors import PlanError
from qwen_assets.pipeline.pause import PAUSE_ENV
from qwen_assets.pipeline.site import SiteError
from qwen_assets.pipeline.storage import StorageError, read_table
from qwen_assets.testing import write_settings
from qwen_assets_tests import cli_process
from qwen_assets_tests.conftest import failure_message, wait_until_paused

TOPIC = "Identify the topic or theme of the given text"
EDITED_TOPIC = "Name the subject the given post is about"


def build(project, lines: list[str] | None = None):
    return rebuild_stale(
        project.instance, project.settings(), log=(lines.append if lines is not None else print)
    )


def coordinates(database: str, task: str) -> np.ndarray:
    frame = read_table(
        database,
        "SELECT x, y, x_aligned, y_aligned FROM umap_coordinates c "
        "JOIN newsgroups_sample USING (doc_id) WHERE task = ? ORDER BY position",
        [task],
    )
    return frame.to_numpy()


def new_topic(raw: dict) -> None:
    assert raw["tasks"]["topic"]["instruction"] == TOPIC
    raw["tasks"]["topic"]["instruction"] = EDITED_TOPIC


def rewrite(project, edit) -> None:
    """Edit a project's settings file, as a user would between builds."""
    edit(project.raw)
    write_settings(project.settings_path, project.raw)


def test_a_map_whose_step_failed_after_its_embeddings_is_rebuilt_by_any_later_build(
    project_copy, monkeypatch, server
):
    """The instruction changes, the embeddings are rebuilt, and the map's step dies: the next
    build (another run) must re-project the map, never keep the old instruction's map."""
    from qwen_assets.pipeline import projection

    project = project_copy()
    before = coordinates(project.build_database, "topic")
    rewrite(project, new_topic)

    def dies(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(projection, "umap_layout", dies)
    server.reset()
    failed = build(project, [])
    assert not failed.succeeded and "umap_coordinates" in (failed.failure or "")
    assert server.received, "the edited task was embedded (and paid for) before the map failed"
    monkeypatch.undo()

    lines: list[str] = []
    server.reset()
    repaired = build(project, lines)
    assert repaired.succeeded, repaired.failure
    assert "rebuild umap_coordinates[topic]: task_embeddings[topic] changed" in lines, lines
    assert server.received == [], "nothing paid for is asked for again"
    after = coordinates(project.build_database, "topic")
    assert not np.allclose(before, after), "the map follows the new instruction's vectors"

    # The same settings built in one go from the same cache give the same map.
    clean = project_copy(new_topic)
    assert build(clean, []).succeeded
    assert np.allclose(coordinates(clean.build_database, "topic"), after)
    assert build(project, []).plan.empty, "and afterwards everything is fresh"


def test_a_site_step_that_fails_leaves_its_files_with_its_tables(project_copy, monkeypatch):
    """site_data fails after its payload is written and before its tables are (a busy
    database): the site's files stay as the tables describe them, and nothing is left over."""
    from qwen_assets.defs.resources import Warehouse

    project = project_copy()
    site = project.root / "site"

    def files() -> dict[str, bytes]:
        return {str(p.relative_to(site)): p.read_bytes() for p in site.rglob("*") if p.is_file()}

    def recorded_payload() -> str:
        return read_table(
            project.build_database,
            "SELECT payload_sha256 FROM site_builds ORDER BY built_at DESC LIMIT 1",
        ).iloc[0, 0]

    before = files()
    assert hashlib.sha256(before["data.json"]).hexdigest() == recorded_payload()
    rewrite(project, lambda raw: raw["site"].update(neighbours=12))

    def busy(self, *args, **kwargs):
        raise StorageError(f"the database {self.database} is busy: process 1 is writing to it")

    monkeypatch.setattr(Warehouse, "write_tables", busy)
    failed = build(project, [])
    assert not failed.succeeded and "is busy" in (failed.failure or "")
    assert files() == before, "no file changed, and no staged file is left behind"
    monkeypatch.undo()

    assert build(project, []).succeeded
    after = files()
    assert after["data.json"] != before["data.json"]
    assert hashlib.sha256(after["data.json"]).hexdigest() == recorded_payload()
    assert not [name for name in after if "qwen-staged" in name]


# Where an instruction edit's build can be killed: as each step starts (the ones before it
# recorded), and inside the steps that write files or publish, between their writes.
BOUNDARIES = [  # in the order a build reaches them
    "asset:task_embeddings",
    "asset:umap_coordinates",
    "asset:query_views",
    "asset:site_data",
    "site_data:staged",
    "site_data:committed",
    "asset:query_database",
    "copy_database:copied",
    "asset:site_pages",
]
COMPARED_TABLES = {
    "newsgroups_sample": "doc_id",
    "document_properties": "doc_id",
    "task_embeddings": "task, doc_id",
    "umap_coordinates": "task, doc_id",
    "task_quality": "variant, task",
    "instruction_effects": "variant, task, figure",
    "map_clusters": "variant, task, cluster",
    "task_documents": "task, doc_id",
}


def tables(database: str) -> dict[str, list]:
    return {
        table: read_table(database, f"SELECT * FROM {table} ORDER BY {order}")
        .astype(str)
        .values.tolist()
        for table, order in COMPARED_TABLES.items()
    }


def site_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.long_running(seconds=36)
def test_a_build_killed_at_every_step_boundary_ends_as_a_clean_build(
    project_copy, tmp_path, server
):
    """An instruction edit's build is SIGKILLed at each step boundary in turn (each build
    stops itself at the next point not yet reached, then dies there). One more build then
    leaves every table, the database people query and the site equal to a clean build's of
    the same settings, and no prompt was paid for twice."""
    project = project_copy()
    rewrite(project, new_topic)
    environ = {
        **os.environ,
        "QWEN_ASSETS_SETTINGS": str(project.settings_path),
        "DAGSTER_HOME": str(project.home),
    }
    server.reset()
    for number, point in enumerate(BOUNDARIES):
        log = tmp_path / f"build-{number}.log"
        process = cli_process.start(["build"], {**environ, PAUSE_ENV: point}, log)
        wait_until_paused(process, point, log.read_text)
        process.kill()
        process.wait()

    final = cli_process.run(["build"], environ, tmp_path / "final", timeout=300)
    assert final.returncode == 0, final.stdout + final.stderr
    lines = final.stdout.splitlines()
    assert any("its process" in line and "is gone" in line for line in lines), lines

    sent = Counter(text for text in server.texts_received if EDITED_TOPIC in text)
    assert sent and max(sent.values()) == 1, "no prompt was paid for twice"

    clean = project_copy(new_topic)
    assert build(clean, []).succeeded
    for ours, theirs in [
        (project.build_database, clean.build_database),
        (project.database, clean.database),
    ]:
        assert tables(ours) == tables(theirs)
    assert site_files(project.root / "site") == site_files(clean.root / "site")
    assert build(project, []).plan.empty


def test_a_site_folder_holding_someone_elses_files_is_refused_untouched(project_copy, tmp_path):
    """site.output_dir at a folder of the user's (a repository root, their own pages): the
    build says so in one line and overwrites or deletes nothing there."""
    theirs = tmp_path / "theirs"
    for name, text in {
        "index.html": "<h1>my home page</h1>",
        "assets/style.css": "body { color: teal }",
        "task-old.html": "an old page of mine",
        "texts/app.js": "console.log('mine')",
        "texts/notes.json": '{"mine": true}',
    }.items():
        (theirs / name).parent.mkdir(parents=True, exist_ok=True)
        (theirs / name).write_text(text)
    before = site_files(theirs)
    project = project_copy(lambda raw: raw["site"].update(output_dir=str(theirs)))
    with pytest.raises(SiteError) as refused:
        build(project, [])
    assert str(refused.value).startswith(
        f"site.output_dir points at {theirs}, which holds files this project did not write "
        "(assets, index.html, task-old.html and 1 more)"
    )
    # Refused where the site is written too (a run launched from the UI, say).
    job = build_definitions(project.settings()).resolve_job_def("build_assets")
    result = job.execute_in_process(
        instance=project.instance,
        asset_selection=[
            AssetKey(name)
            for name in (
                "site_data",
                "task_quality",
                "instruction_effects",
                "map_clusters",
                "site_builds",
            )
        ],
        raise_on_error=False,
    )
    assert not result.success
    assert "which holds files this project did not write" in failure_message(result)
    assert site_files(theirs) == before, "nothing of theirs was overwritten or deleted"


def test_outputs_deleted_or_changed_since_the_build_are_rebuilt(project_copy, server):
    """The database people query deleted, data.json edited by hand, a page removed: the next
    build names each and rebuilds it (and nothing else), paying nothing."""
    project = project_copy()
    site = project.root / "site"
    Path(project.database).unlink()
    (site / "data.json").write_text('{"edited": true}')
    (site / "task-topic.html").unlink()
    server.reset()
    lines: list[str] = []
    report = build(project, lines)
    assert report.succeeded, report.failure
    assert any(line.startswith("rebuild query_database: ") for line in lines), lines
    assert (
        f"rebuild site_data: {site / 'data.json'} is not the payload the last build wrote" in lines
    )
    assert f"rebuild site_pages: {site / 'task-topic.html'} is missing" in lines
    assert not any("task_embeddings" in line or "umap_coordinates" in line for line in lines)
    assert server.received == []
    assert read_table(project.database, "SELECT count(*) FROM task_embeddings").iloc[0, 0] > 0
    assert (site / "task-topic.html").is_file()
    assert (
        hashlib.sha256((site / "data.json").read_bytes()).hexdigest()
        == read_table(
            project.build_database, "SELECT payload_sha256 FROM site_builds ORDER BY built_at DESC"
        ).iloc[0, 0]
    )
    assert build(project, []).plan.empty


def test_force_rebuilds_an_asset_and_what_follows_it(project_copy, server):
    project = project_copy()
    server.reset()
    report = rebuild_stale(
        project.instance, project.settings(), force=["umap_coordinates[topic]"], log=print
    )
    assert report.succeeded
    assert report.plan.reasons["umap_coordinates[topic]"] == "asked for by --force"
    assert list(report.plan.by_task) == ["topic"] and "site_data" in str(report.plan.after)
    assert server.received == [], "forcing a map re-projects it, it never re-embeds"
    (latest,) = project.instance.fetch_materializations(
        AssetRecordsFilter(AssetKey("umap_coordinates"), asset_partitions=["topic"]), limit=1
    ).records
    said_then = latest.asset_materialization.metadata["layout"].value
    assert said_then == "projected again, as asked; aligned onto the old layout", (
        "the forced map is projected anew, not kept as it was"
    )
    said: list[str] = []
    assert build(project, said).plan.empty, "forced once, not for ever"
    assert said == ["everything is fresh: nothing to build"]
    with pytest.raises(PlanError, match=r"--force umap\[topic\]: no such asset; assets: "):
        rebuild_stale(project.instance, project.settings(), force=["umap[topic]"], log=print)
    with pytest.raises(PlanError, match=r"no partition 'topics'; partitions: default, topic"):
        rebuild_stale(
            project.instance, project.settings(), force=["task_embeddings[topics]"], log=print
        )


def test_a_damaged_builds_database_is_moved_aside_and_rebuilt_paying_nothing(project_copy, server):
    """The builds' database truncated (a crash, a full disk): the next build says so in one
    line, keeps the damaged file aside and rebuilds the database from the archive and the
    cache, which holds every paid vector."""
    project = project_copy()
    damaged = Path(project.build_database)
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 3])
    lines: list[str] = []
    server.reset()
    report = build(project, lines)
    assert report.succeeded, report.failure
    (aside,) = damaged.parent.glob(f"{damaged.name}.damaged-*")
    (said,) = [line for line in lines if "is damaged" in line]
    assert said.startswith(f"the database {damaged} is damaged (")
    assert said.endswith(f"): moved it to {aside}; rebuilding it")
    assert server.received == [], "the cache kept every paid vector"
    assert build(project, []).plan.empty


def test_a_group_smaller_than_per_category_is_said_where_people_look(project_copy):
    """Asking for more posts than a group has takes them all, and says so on the command line
    (a note the build's display prints), not only in Dagster's log."""
    import logging

    from qwen_assets.pipeline.embedding.core import PROGRESS_LOGGER

    project = project_copy(lambda raw: raw["corpus"].update(per_category=5000))
    notes: list[str] = []

    class Notes(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if hasattr(record, "embedding_note"):
                notes.append(record.embedding_note)

    handler = Notes()
    PROGRESS_LOGGER.addHandler(handler)
    try:
        job = build_definitions(project.settings()).resolve_job_def("build_assets")
        result = job.execute_in_process(
            instance=project.instance, asset_selection=[AssetKey("newsgroups_sample")]
        )
    finally:
        PROGRESS_LOGGER.removeHandler(handler)
    assert result.success
    sizes = dict(
        read_table(
            project.build_database,
            "SELECT category, count(*) FROM newsgroups_sample GROUP BY category",
        ).values.tolist()
    )
    assert sorted(notes) == sorted(
        f"corpus.per_category is 5000, but {group} has only {size} posts after cleaning: "
        f"took all {size}"
        for group, size in sizes.items()
    )


def test_the_database_people_query_is_not_published_while_anything_upstream_is_stale(
    project_copy,
):
    """An instruction edited, and only query_database materialized (from the UI, say): the run
    fails naming what is stale, and the database people query keeps its last complete state."""
    project = project_copy()
    before = hashlib.sha256(Path(project.database).read_bytes()).hexdigest()
    rewrite(project, new_topic)
    job = build_definitions(project.settings()).resolve_job_def("build_assets")
    result = job.execute_in_process(
        instance=project.instance,
        asset_selection=[AssetKey("query_database")],
        raise_on_error=False,
    )
    assert not result.success
    message = failure_message(result)
    assert "task_embeddings" in message and "is not up to date" in message, message
    assert "the database people query keeps its last complete state" in message
    assert hashlib.sha256(Path(project.database).read_bytes()).hexdigest() == before
