"""Variants side by side: two ways of embedding x four tasks as one grid of partitions, built
through the loopback server, then edited one row or one column at a time."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from dagster import AssetKey, MultiPartitionsDefinition

from qwen_assets.cli import rebuild_stale
from qwen_assets.dagster_internals import PARTITION_RANGE_END_TAG, PARTITION_RANGE_START_TAG
from qwen_assets.definitions import build_definitions
from qwen_assets.defs.partitions import MapGrid
from qwen_assets.orchestration.sources import source_versions
from qwen_assets.orchestration.stale import stale_plan
from qwen_assets.pipeline.embedding.identity import prompt_prefix
from qwen_assets.pipeline.storage import read_table
from qwen_assets.testing import write_settings
from qwen_assets_tests.conftest import VARIANTS, cli_on
from qwen_assets_tests.test_pipeline import sensor_tick
from qwen_assets_tests.test_query import documented_query

EMBEDDINGS, MAPS = AssetKey("task_embeddings"), AssetKey("umap_coordinates")


def batches(project) -> int:
    """Requests one map of the sample costs when nothing of it is cached."""
    return math.ceil(project.documents() / project.settings().embedding.batch_size)


def instructed(project) -> int:
    """Tasks with an instruction: only their prompts carry the variant's template."""
    return sum(bool(task.instruction) for task in project.settings().tasks.values())


def build(project, server):
    server.reset()
    report = rebuild_stale(project.instance, project.settings(), log=lambda line: None)
    assert report.succeeded, report.failure
    return report, len(server.received)


def test_the_maps_are_a_variant_by_task_grid_in_dagster(variants_built):
    settings = variants_built.settings()
    defs = build_definitions(settings)
    partitions = defs.resolve_assets_def("task_embeddings").partitions_def
    assert isinstance(partitions, MultiPartitionsDefinition)
    assert {d.name for d in partitions.partitions_defs} == {"variant", "task"}
    assert len(partitions.get_partition_keys()) == len(VARIANTS) * len(settings.tasks)
    assert defs.resolve_assets_def("umap_coordinates").partitions_def == partitions


def test_a_cold_build_pays_for_each_map_once(variants_built):
    maps = len(VARIANTS) * len(variants_built.settings().tasks)
    assert variants_built.cold_requests == maps * batches(variants_built)
    stored = read_table(
        variants_built.database,
        """SELECT variant, task, count(*) AS n, min(len(embedding)) AS smallest,
                  max(len(embedding)) AS largest, any_value(typeof(embedding)) AS kind
           FROM task_embeddings GROUP BY ALL ORDER BY ALL""",
    )
    assert len(stored) == maps
    assert set(stored["n"]) == {variants_built.documents()}
    sizes = stored.groupby("variant")[["smallest", "largest"]].agg(["min", "max"])
    assert sizes.loc["small"].tolist() == [128] * 4
    assert sizes.loc["official"].tolist() == [384] * 4, "the stand-in model's full size"
    assert set(stored["kind"]) == {"FLOAT[]"}, "sizes differ, so the column is a list"


def test_a_document_is_its_own_nearest_neighbour_in_every_map(variants_built):
    nearest = read_table(
        variants_built.database,
        """SELECT a.variant, a.task, a.doc_id,
                  arg_max(b.doc_id, list_cosine_similarity(a.embedding, b.embedding)) AS first
           FROM task_embeddings a JOIN task_embeddings b USING (variant, task)
           GROUP BY ALL""",
    )
    share = (
        (nearest["first"] == nearest["doc_id"])
        .groupby([nearest["variant"], nearest["task"]])
        .mean()
    )
    assert len(share) == len(VARIANTS) * len(variants_built.settings().tasks)
    assert (share > 0.97).all(), share  # the sample's one duplicated text may pick its twin


def test_an_edited_variant_rebuilds_its_row_and_an_edited_instruction_its_column(
    variants_built, project_copy, server
):
    project = project_copy(of=variants_built)
    grid = MapGrid(project.settings())
    report, requests = build(project, server)
    assert report.run_ids == [] and requests == 0, "nothing changed: no run, no request"

    raw = project.raw
    raw["site"]["output_dir"] = str(project.root / "site")  # this copy's builds write a site
    raw["variants"]["small"]["prompt_template"] = "Instruct: {instruction}\nQuery: \n{text}"
    write_settings(project.settings_path, raw)
    plan = stale_plan(
        build_definitions(project.settings()),
        project.instance,
        source_versions(project.settings()),
    )
    assert {grid.split(key) for key in plan.by_task} == {
        ("small", task) for task in project.settings().tasks
    }
    assert all(assets == [EMBEDDINGS, MAPS] for assets in plan.by_task.values())
    assert len([run for run in plan.runs() if run.tasks]) == 1, "the row is one run"
    report, requests = build(project, server)
    assert requests == instructed(project) * batches(project)
    settings = project.settings()
    prefixes = tuple(
        prompt_prefix(settings, task, "small")
        for task in settings.tasks
        if settings.tasks[task].instruction
    )
    assert all(text.startswith(prefixes) for batch in server.received for text in batch), (
        "only the small variant's new prompts were sent"
    )
    assert all("Query: \n" in prefix for prefix in prefixes)
    assert sorted(report.changed_instructions) == sorted(
        f"small/{task}" for task in project.settings().tasks
    )

    raw["tasks"]["topic"]["instruction"] = "Name the subject of the given text"
    write_settings(project.settings_path, raw)
    report, requests = build(project, server)
    assert {grid.split(key) for key in report.plan.by_task} == {
        (variant, "topic") for variant in VARIANTS
    }
    assert len([run for run in report.plan.runs() if run.tasks]) == 1, "the column is one run"
    assert requests == len(VARIANTS) * batches(project)

    report, requests = build(project, server)
    assert report.run_ids == [] and requests == 0


def test_adding_variants_to_a_built_project_pays_only_for_the_new_ones(
    small_built, project_copy, server
):
    """A project built before variants keeps its paid vectors: the first variant is
    [embedding] as it was, so only the new variant's prompts are requested."""
    project = project_copy(lambda raw: raw.update(variants=VARIANTS))
    project.raw["site"]["output_dir"] = str(project.root / "site")
    write_settings(project.settings_path, project.raw)
    report, requests = build(project, server)
    assert requests == len(project.settings().tasks) * batches(project)
    maps = [
        record
        for record in project.instance.fetch_materializations(EMBEDDINGS, limit=200).records
        if record.run_id in report.run_ids
    ]
    assert len(maps) == len(VARIANTS) * len(project.settings().tasks), "every map of the grid"
    assert len({record.run_id for record in maps}) == 1, "all in one run"
    variants = read_table(project.database, "SELECT DISTINCT variant FROM umap_coordinates")
    assert set(variants["variant"]) == set(VARIANTS)


def test_the_build_says_what_each_stale_map_will_embed_before_paying(variants_built, project_copy):
    project = project_copy(of=variants_built)
    project.raw["variants"]["small"]["model"] = "another-model"
    write_settings(project.settings_path, project.raw)
    lines: list[str] = []
    rebuild_stale(project.instance, project.settings(), dry_run=True, log=lines.append)
    costs = [line for line in lines if line.startswith("cost ")]
    documents = project.documents()
    assert len(costs) == len(project.settings().tasks)
    for line in costs:
        assert line.startswith("cost small/")
        requests = math.ceil(documents / project.settings().embedding.batch_size)
        assert line.endswith(
            f": {documents} texts to embed with http (model another-model at 128 dimensions), "
            f"{requests} requests, 0 from the cache"
        )


def test_a_dry_run_reads_the_same_in_every_process(variants_built, project_copy):
    """Python orders sets differently in each process (hash seeds): the plan a build states
    must not, so two dry runs can be compared line by line."""
    project = project_copy(of=variants_built)
    project.raw["variants"]["small"]["dimensions"] = 64
    write_settings(project.settings_path, project.raw)
    said = set()
    for seed in ("1", "2", "4"):  # three seeds that ordered it three ways before
        plan = subprocess.run(
            [sys.executable, "-m", "qwen_assets.cli", "build", "--dry-run"],
            env={
                **os.environ,
                "QWEN_ASSETS_SETTINGS": str(project.settings_path),
                "DAGSTER_HOME": str(project.home),
                "PYTHONHASHSEED": seed,
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert plan.returncode == 0, plan.stderr
        said.add(plan.stdout)
    assert len(said) == 1, "the plan reads differently in another process"
    plan = said.pop()
    for task in project.settings().tasks:
        row = f"task_embeddings[{task}|small]: task_instructions[{task}|small] changed"
        assert f"rebuild {row}" in plan
    assert "rebuild site_builds: computed together with" in plan


def test_the_query_views_and_the_readmes_variant_query_hold_every_variant(variants_built):
    with duckdb.connect(variants_built.database, read_only=True) as connection:
        documents = connection.sql(
            "SELECT variant, count(*) AS n FROM task_documents GROUP BY variant"
        ).df()
        assert dict(zip(documents["variant"], documents["n"], strict=True)) == {
            variant: len(variants_built.settings().tasks) * variants_built.documents()
            for variant in VARIANTS
        }
        query = documented_query("the variant whose neighbourhoods agree most")
        best = connection.sql(query).df().set_index("task")
        quality = connection.sql("SELECT * FROM task_quality").df()
    targeted = quality[quality["target"].notna()]
    assert set(best.index) == set(targeted["task"])
    for task, rows in targeted.groupby("task"):
        top = rows.loc[rows["predicts_target"].idxmax()]
        assert best.loc[task, "best_variant"] == top["variant"]
        assert best.loc[task, "figure"] == pytest.approx(top["predicts_target"])


@pytest.fixture
def variants_cli(variants_queried, monkeypatch, capsys):
    return cli_on(variants_queried, monkeypatch, capsys)


def test_the_command_line_reads_the_variant_it_is_given(variants_cli, variants_built):
    doc = read_table(variants_built.database, "SELECT min(doc_id) AS d FROM newsgroups_sample")
    doc = doc["d"][0]
    ranked = {
        variant: json.loads(
            variants_cli(
                "neighbours", doc, "--task", "topic", "--variant", variant, "--format", "json"
            )
        )
        for variant in VARIANTS
    }
    default = json.loads(variants_cli("neighbours", doc, "--task", "topic", "--format", "json"))
    assert default == ranked["official"], "without --variant: the reference, the first listed"
    for rows in ranked.values():
        assert rows[0]["doc_id"] == doc, "a post is its own nearest neighbour in every variant"
    side_by_side = json.loads(
        variants_cli("compare", doc, "--tasks", "official/topic,small/topic", "--format", "json")
    )
    assert {"rank_official/topic", "rank_small/topic"} <= set(side_by_side[0])
    text = read_table(
        variants_built.database, "SELECT text FROM newsgroups_sample WHERE doc_id = ?", [doc]
    )["text"][0]
    sentence = " ".join(text.split()[:40])
    found = {
        variant: json.loads(
            variants_cli(
                "search", sentence, "--task", "topic", "--variant", variant, "--format", "json"
            )
        )
        for variant in VARIANTS
    }
    for rows in found.values():
        assert rows[0]["doc_id"] == doc, "its own first words find the post, in each variant"
    assert found["official"] != found["small"], "each variant's space answers for itself"
    variants_cli("neighbours", doc, "--task", "topic", "--variant", "large", expect=2)
    assert variants_cli.err.strip() == (
        "qwen-assets: unknown variant 'large'; configured variants: official, small"
    )


def test_exporting_every_variant_writes_a_row_per_variant_task_and_post(
    variants_cli, variants_built, tmp_path: Path
):
    out = tmp_path / "all.parquet"
    variants_cli("export", str(out), "--variant", "all")
    rows = duckdb.sql(f"SELECT variant, task FROM '{out}'").df()
    assert len(rows) == len(VARIANTS) * len(variants_built.settings().tasks) * (
        variants_built.documents()
    )
    one = tmp_path / "demo.csv"
    variants_cli("export", str(one), "--variant", "small", "--task", "topic", "--format", "csv")
    assert set(
        duckdb.sql(f"SELECT DISTINCT variant || '/' || task AS m FROM '{one}'").df()["m"]
    ) == {"small/topic"}
    unknown = tmp_path / "unknown.parquet"
    variants_cli("export", str(unknown), "--variant", "all", "--task", "topics", expect=2)
    assert variants_cli.err.strip().startswith("qwen-assets: unknown task 'topics'; built tasks:")
    assert not unknown.exists(), "nothing is written for a task that is not built"


def test_the_rebuild_sensor_asks_for_an_edited_column_in_one_run(variants_built, project_copy):
    project = project_copy(of=variants_built)
    project.raw["tasks"]["toxicity"]["instruction"] = "Is the given text civil or not?"
    write_settings(project.settings_path, project.raw)
    requests = sensor_tick(project.settings_path, project.instance).run_requests
    grid = MapGrid(project.settings())
    columns = [r for r in requests if r.tags.get(PARTITION_RANGE_START_TAG)]
    assert len(columns) == 1, "the column is one run"
    start, end = (
        columns[0].tags[tag] for tag in (PARTITION_RANGE_START_TAG, PARTITION_RANGE_END_TAG)
    )
    assert {grid.split(start), grid.split(end)} == {(variant, "toxicity") for variant in VARIANTS}
    assert set(columns[0].asset_selection) == {EMBEDDINGS, MAPS}
