"""Ordinary faults that must lose nothing and publish nothing stale: a step that stops half
way, a wrong answer from the API, settings that point two things at one file, a folder that
holds someone's files. Each test injects the fault for real (the loopback server, a failing
write, a file in the way) on a copy of the small built project."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from qwen_assets.definitions import rebuild_stale
from qwen_assets.storage import StorageError, read_table
from qwen_assets.testing import write_settings

TOPIC = "Identify the topic or theme of the given text"
EDITED_TOPIC = "Name the subject the given post is about"


def own_site(tmp_path: Path):
    """A settings edit: the copy writes its site in a folder of its own."""

    def edit(raw: dict) -> None:
        raw["site"]["output_dir"] = str(tmp_path / "own-site")

    return edit


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
    project_copy, tmp_path, monkeypatch, server
):
    """The instruction changes, the embeddings are rebuilt, and the map's step dies: the next
    build (another run) must re-project the map, never keep the old instruction's map."""
    from qwen_assets.defs import projection_assets

    project = project_copy(own_site(tmp_path))
    build(project, [])  # the copy's own site
    before = coordinates(project.build_database, "topic")
    rewrite(project, new_topic)

    def dies(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(projection_assets, "umap_layout", dies)
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
    clean = project_copy(lambda raw: (own_site(tmp_path / "clean")(raw), new_topic(raw)))
    assert build(clean, []).succeeded
    assert np.allclose(coordinates(clean.build_database, "topic"), after)
    assert build(project, []).plan.empty, "and afterwards everything is fresh"


def test_a_site_step_that_fails_leaves_its_files_with_its_tables(
    project_copy, tmp_path, monkeypatch
):
    """site_data fails after its payload is written and before its tables are (a busy
    database): the site's files stay as the tables describe them, and nothing is left over."""
    from qwen_assets.defs.resources import Warehouse

    project = project_copy(own_site(tmp_path))
    assert build(project, []).succeeded
    site = tmp_path / "own-site"

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
