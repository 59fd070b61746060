"""The rules behind the asset checks, and a failing blocking check stopping its downstream in a
real run."""

from __future__ import annotations

import numpy as np
import pytest
from dagster import AssetCheckKey, AssetKey

from qwen_assets.definitions import build_definitions
from qwen_assets.pipeline.checks import coordinate_problems, embedding_problems


def unit_rows(rows: int, dimension: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(rows, dimension))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_good_vectors_have_no_problems():
    assert embedding_problems(unit_rows(5, 8), 5, 8) == []
    assert embedding_problems(unit_rows(5, 8), 5, None) == []


@pytest.mark.parametrize(
    ("vectors", "expected_rows", "dimension", "says"),
    [
        (unit_rows(4, 8), 5, None, "4 rows for 5 sample documents"),
        (unit_rows(5, 8), 5, 16, "dimension 8, configured 16"),
        (np.vstack([unit_rows(4, 8), np.full((1, 8), np.nan)]), 5, None, "non-finite values"),
        (np.vstack([unit_rows(4, 8), np.zeros((1, 8))]), 5, None, "1 vectors are not unit length"),
        (2 * unit_rows(5, 8), 5, None, "5 vectors are not unit length"),
        (np.tile(unit_rows(1, 8), (5, 1)), 5, None, "all 5 vectors are the same"),
    ],
)
def test_each_embedding_problem_is_named(vectors, expected_rows, dimension, says):
    assert any(says in found for found in embedding_problems(vectors, expected_rows, dimension))


def test_coordinate_problems_name_missing_and_non_finite_points():
    points = np.random.default_rng(1).normal(size=(6, 4))
    assert coordinate_problems(points, 6) == []
    assert coordinate_problems(points, 7) == ["6 points for 7 documents"]
    points[2, 1] = np.inf
    assert coordinate_problems(points, 6) == ["non-finite coordinates"]


def test_a_failing_blocking_check_stops_the_map(project_copy, monkeypatch):
    """The check rule reports a problem for one task (the rule itself is tested above); the run
    is real: the map of that task is not built, and Dagster records why."""
    import qwen_assets.defs.embedding_assets as embedding_assets

    project = project_copy()
    monkeypatch.setattr(
        embedding_assets, "embedding_problems", lambda *arguments: ["injected: 3 rows off"]
    )
    job = build_definitions(project.settings()).resolve_job_def("build_assets")
    maps = project.instance.fetch_materializations(AssetKey("umap_coordinates"), limit=100)
    result = job.execute_in_process(
        instance=project.instance,
        partition_key="topic",
        asset_selection=[AssetKey("task_embeddings"), AssetKey("umap_coordinates")],
        raise_on_error=False,
    )
    assert not result.success
    assert (
        project.instance.fetch_materializations(AssetKey("umap_coordinates"), limit=100).records
        == maps.records
    ), "no map was recorded"
    (check,) = result.get_asset_check_evaluations()
    assert check.asset_check_key == AssetCheckKey(
        AssetKey("task_embeddings"), "unit_vectors_for_every_document"
    )
    assert not check.passed
    assert check.metadata["topic"].value == "injected: 3 rows off"
    assert "umap_coordinates" not in {
        event.step_key for event in result.all_events if event.is_step_success
    }, "the map's step never ran"


def materializations(project, asset: str, partition: str | None = None) -> int:
    from dagster import AssetRecordsFilter

    records = project.instance.fetch_materializations(
        AssetRecordsFilter(
            asset_key=AssetKey(asset), asset_partitions=[partition] if partition else None
        ),
        limit=1000,
    ).records
    return len(records)


def test_a_failed_blocking_check_keeps_its_partition_out_of_later_builds(
    project_copy, server, monkeypatch
):
    """Dagster's blocking checks stop what follows within a run; the stale rule keeps the
    partition out of every later build too, until a rebuild passes its check."""
    import qwen_assets.defs.embedding_assets as embedding_assets
    from qwen_assets.cli import rebuild_stale

    project = project_copy(
        lambda raw: raw["tasks"]["topic"].update(instruction="Name the subject of the text")
    )
    maps_before = materializations(project, "umap_coordinates", "topic")
    broken = lambda *arguments: ["injected: 3 vectors are not unit length"]  # noqa: E731
    monkeypatch.setattr(embedding_assets, "embedding_problems", broken)
    lines: list[str] = []
    first = rebuild_stale(project.instance, project.settings(), log=lines.append)
    assert not first.succeeded
    assert "unit_vectors_for_every_document" in first.failure, first.failure
    second = rebuild_stale(project.instance, project.settings(), log=lines.append)
    assert not second.succeeded
    assert second.plan.reasons["task_embeddings[topic]"] == (
        "its blocking check failed (injected: 3 vectors are not unit length)"
    )
    assert materializations(project, "umap_coordinates", "topic") == maps_before, (
        "no build mapped the vectors that failed their check"
    )

    monkeypatch.undo()  # the check passes again
    server.reset()
    third = rebuild_stale(project.instance, project.settings(), log=lines.append)
    assert third.succeeded, third.failure
    assert server.received == [], "the vectors came from the cache"
    assert materializations(project, "umap_coordinates", "topic") == maps_before + 1


def test_a_map_that_fails_its_check_is_never_drawn(project_copy, monkeypatch, tmp_path):
    import qwen_assets.defs.projection_assets as projection_assets
    from qwen_assets.cli import rebuild_stale

    def edit(raw: dict) -> None:
        raw["umap"]["n_neighbors"] = 12
        raw["site"]["output_dir"] = str(tmp_path / "site")

    project = project_copy(edit)
    sites_before = materializations(project, "site_data")
    monkeypatch.setattr(
        projection_assets, "coordinate_problems", lambda *arguments: ["injected: 2 points"]
    )
    for _ in range(2):
        report = rebuild_stale(project.instance, project.settings(), log=lambda line: None)
        assert not report.succeeded
        assert "finite_point_for_every_document" in report.failure, report.failure
    assert report.plan.reasons["umap_coordinates[topic]"] == (
        "its blocking check failed (injected: 2 points)"
    )
    assert materializations(project, "site_data") == sites_before, "no site from failed maps"
    assert not (tmp_path / "site").exists()
