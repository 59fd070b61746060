"""Querying the built database: docs/querying.md's SQL, and the command line's subcommands."""

import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import duckdb
import numpy as np
import pytest

from qwen_assets.cli import USER_ERROR, main
from qwen_assets.pipeline.embedding.identity import prompt_prefix
from qwen_assets.pipeline.site import read_payload
from qwen_assets.testing import project_settings, write_settings
from qwen_assets_tests.conftest import REPO, Writer, cli_on, duckdb_1_5_cli

DOC = "train/sci.space/61178"  # a sci.space post of the demo's sample, used in docs/querying.md
TASKS = ["default", "topic", "sentiment", "toxicity"]


def documented_queries() -> list[str]:
    """Every SQL query the docs show (most on docs/querying.md, one on docs/variants.md)."""
    text = "\n".join(page.read_text() for page in sorted((REPO / "docs").glob("*.md")))
    return re.findall(r"```sql\n(.*?)```", text, flags=re.S)


def documented_query(says: str) -> str:
    """docs/querying.md's query whose opening comment says ``says``: a test runs the query it
    means, however the page is reordered."""
    (sql,) = [sql for sql in documented_queries() if says in sql.splitlines()[0]]
    return sql


@pytest.fixture(scope="module")
def database(built):
    connection = duckdb.connect(built.database, read_only=True)
    yield connection
    connection.close()


def run(connection, sql: str):
    return connection.sql(sql).df()


def test_the_docs_show_the_queries_the_tests_run():
    assert len(documented_queries()) == 11


def numpy_ranking(
    connection, task: str, k: int, *, doc_id: str | None = None, query: np.ndarray | None = None
) -> tuple[list[str], np.ndarray]:
    """The k posts nearest by cosine to a stored post's vector (``doc_id``) or to ``query``,
    computed with numpy on the stored vectors of ``task``."""
    stored = run(connection, f"SELECT doc_id, embedding FROM task_embeddings WHERE task = '{task}'")
    vectors = np.stack(stored["embedding"].to_numpy()).astype(np.float64)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    if doc_id is not None:
        query = vectors[stored["doc_id"].tolist().index(doc_id)]
    assert query is not None
    similarities = vectors @ (query / np.linalg.norm(query))
    order = np.argsort(-similarities, kind="stable")[:k]
    return stored["doc_id"].to_numpy()[order].tolist(), similarities[order]


def numpy_neighbours(connection, task: str, doc_id: str, k: int) -> tuple[list[str], np.ndarray]:
    return numpy_ranking(connection, task, k, doc_id=doc_id)


def test_documented_classifier_figures_give_each_map_a_probe_a_clustering_and_its_cka(database):
    result = run(database, documented_query("what a linear probe and a clustering get"))
    assert sorted(result["task"]) == sorted(TASKS), "one row a map"
    for column in ("probe", "v_measure", "cka_with_default"):
        assert result[column].between(0, 1).all(), (column, result[column].tolist())
    figures = result.set_index("task")
    assert figures.loc["default", "cka_with_default"] == 1.0, "default is its own reference"
    assert (figures["cka_with_default"].drop("default") < 1.0).all(), "an instruction moves it"
    assert (figures["probe"] > 1 / 10).all(), "every space beats chance on 10 groups"


def test_documented_nearest_neighbours_are_numpys_and_start_with_the_post_itself(database):
    result = run(
        database, documented_query("the ten nearest neighbours of a post in the topic space")
    )
    ids, similarities = numpy_neighbours(database, "topic", DOC, 10)
    assert result["doc_id"][0] == DOC, "a post is its own nearest neighbour"
    assert result["doc_id"].tolist() == ids
    assert result["similarity"].to_numpy() == pytest.approx(similarities, abs=1e-5)


def test_documented_side_by_side_neighbours_agree_with_the_cli(database, cli):
    result = run(database, documented_query("the same post's five nearest neighbours"))
    assert result["rank"].tolist() == [1, 2, 3, 4, 5]
    for task, column in [("default", "in_default"), ("topic", "in_topic")]:
        ranked = json.loads(cli("neighbours", DOC, "--task", task, "-k", "6", "--format", "json"))
        assert result[column].tolist() == [row["doc_id"] for row in ranked[1:]]


def test_documented_centroid_query_agrees_with_numpy_and_beats_chance(database):
    result = run(database, documented_query("how often the nearest newsgroup centroid")).set_index(
        "task"
    )["own_group_is_nearest"]
    assert sorted(result.index) == sorted(TASKS)
    rows = run(
        database,
        "SELECT e.task, s.category, e.embedding FROM task_embeddings e "
        "JOIN newsgroups_sample s USING (doc_id)",
    )
    for task, group in rows.groupby("task"):
        vectors = np.stack(group["embedding"].to_numpy()).astype(np.float64)
        categories = group["category"].to_numpy()
        names = sorted(set(categories))
        centroids = np.stack([vectors[categories == name].mean(axis=0) for name in names])
        cosine = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)) @ (
            centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
        ).T
        nearest = np.array(names)[cosine.argmax(axis=1)]
        assert result[task] == pytest.approx((nearest == categories).mean(), abs=1e-3)
        assert result[task] > 1 / len(names), "better than a random group"


def test_documented_same_group_query_matches_the_sites_neighbours(database, built):
    result = run(database, documented_query("of each post's 10 nearest neighbours")).set_index(
        "task"
    )["same_group_of_10"]
    payload = read_payload(built.root / "site")
    categories = np.array(payload["documents"]["category"])
    for task in payload["tasks"]:
        neighbours = np.array(task["neighbours"])
        same = (categories[neighbours] == categories[:, None]).sum(axis=1).mean()
        assert result[task["name"]] == pytest.approx(same, abs=0.02), (
            "DuckDB and numpy find the same neighbours"
        )


def test_documented_quality_query_holds_the_figures_the_site_shows(database, built):
    result = run(
        database, documented_query("the quality figures of the last site build")
    ).set_index("task")
    payload = read_payload(built.root / "site")
    assert sorted(result.index) == sorted(TASKS)
    for task in payload["tasks"]:
        for name, value in task["quality"].items():
            assert result.loc[task["name"], name] == pytest.approx(value, abs=1e-3), name


def test_documented_headline_query_names_each_targeted_task_and_its_target(database):
    result = run(database, documented_query("its target, its figure on that target"))
    assert result["task"].tolist() == ["sentiment", "topic", "toxicity"]
    for task, target, headline in result.itertuples(index=False):
        assert headline.startswith(f"The {task} instruction ") and f" on {target} " in headline


@pytest.fixture
def cli(queried, monkeypatch, capsys):
    """Run ``qwen-assets ...`` in process on a copy of the built project; returns stdout."""
    return cli_on(queried, monkeypatch, capsys)


def test_neighbours_are_the_posts_numpy_finds_nearest(cli, database):
    rows = json.loads(cli("neighbours", DOC, "--task", "topic", "-k", "7", "--format", "json"))
    ids, similarities = numpy_neighbours(database, "topic", DOC, 7)
    assert [row["doc_id"] for row in rows] == ids
    assert [row["similarity"] for row in rows] == pytest.approx(similarities, abs=1e-5)
    assert [row["rank"] for row in rows] == list(range(1, 8))
    table = cli("neighbours", DOC, "--task", "topic", "-k", "3")
    assert table.splitlines()[0].split()[:3] == ["rank", "doc_id", "category"]
    assert len(table.splitlines()) == 2 + 3
    parsed = list(
        csv.DictReader(io.StringIO(cli("neighbours", DOC, "--task", "topic", "--format", "csv")))
    )
    assert [row["doc_id"] for row in parsed][:7] == [row["doc_id"] for row in rows]


@pytest.mark.parametrize("against", [None, "default"])
def test_search_for_a_sentence_of_a_post_finds_that_post_first(
    cli, built, database, fresh_server, against
):
    """The query is embedded with the task's instruction in either mode; the posts it is
    ranked against are the task's own, or (``--against default``, Qwen3's retrieval) those
    embedded without an instruction: the ranking is numpy's over those stored vectors."""
    sample = duckdb.connect(built.database, read_only=True)
    try:
        doc_id, text = sample.execute(
            "SELECT doc_id, text FROM newsgroups_sample WHERE length(text) > 600 ORDER BY position LIMIT 1"
        ).fetchall()[0]
    finally:
        sample.close()
    start = 5 if against else 0  # a query of its own: the copy's cache keeps each one
    sentence = " ".join(text.split()[start : start + 40])
    mode = ["--against", against] if against else []
    arguments = ["search", sentence, "--task", "topic", "-k", "5", *mode]
    rows = json.loads(cli(*arguments, "--format", "json"))
    assert rows[0]["doc_id"] == doc_id
    (sent,) = fresh_server.received  # one request, of the query alone
    assert sent == [prompt_prefix(built.settings(), "topic") + sentence]
    ids, similarities = numpy_ranking(
        database, against or "topic", 5, query=fresh_server.vectorise(sent)[0]
    )
    assert [row["doc_id"] for row in rows] == ids
    assert [row["similarity"] for row in rows] == pytest.approx(similarities, abs=1e-5)
    assert cli(*arguments).splitlines()[-1] == (
        f"the query as topic embeds it, against the posts as {against or 'topic'} embeds them"
    )
    assert len(fresh_server.received) == 1, "the same query again comes from the cache"


def test_compare_shows_each_neighbours_rank_in_both_tasks(cli):
    rows = json.loads(
        cli("compare", DOC, "--tasks", "default,topic", "-k", "5", "--format", "json")
    )
    default = json.loads(cli("neighbours", DOC, "--task", "default", "-k", "6", "--format", "json"))
    assert {row["doc_id"] for row in rows if row["rank_default"]} == {
        r["doc_id"] for r in default[1:]
    }
    for row in rows:
        assert row["in_all"] == (row["rank_default"] is not None and row["rank_topic"] is not None)
    shared = sum(row["in_all"] for row in rows)
    assert len(rows) == 10 - shared
    table = cli("compare", DOC, "--tasks", "default,topic", "-k", "5")
    assert f"{shared} of 5 neighbours shared by default and topic" in table


def test_export_round_trips_through_duckdb(cli, tmp_path: Path):
    everything = tmp_path / "all.parquet"
    cli("export", str(everything))
    rows = duckdb.sql(
        f"SELECT count(*), min(len(embedding)), max(len(embedding)), count(DISTINCT task), "
        f"count(x) FROM '{everything}'"
    ).fetchall()[0]
    assert rows == (3200, 384, 384, 4, 3200)
    columns = [row[0] for row in duckdb.sql(f"DESCRIBE SELECT * FROM '{everything}'").fetchall()]
    assert columns == ["variant", "task", "doc_id", "category", "text", "x", "y", "embedding"]
    one = tmp_path / "topic.csv"
    cli("export", str(one), "--task", "topic", "--format", "csv")
    assert duckdb.sql(f"SELECT count(*), count(DISTINCT task) FROM '{one}'").fetchall() == [
        (800, 1)
    ]
    assert not list(tmp_path.glob(".*partial")), "no half-written file is left behind"


def test_export_refuses_a_folder_keeps_a_file_unless_forced_and_disarms_formulas(
    cli, tmp_path: Path, database
):
    cli("export", str(tmp_path), "--task", "topic", expect=2)
    assert f"{tmp_path} is a folder: name the file to write" in cli.err
    mine = tmp_path / "mine.csv"
    mine.write_text("my own numbers")
    cli("export", str(mine), "--task", "topic", "--format", "csv", expect=2)
    assert f"{mine} exists: pass --force to replace it" in cli.err
    assert mine.read_text() == "my own numbers"
    assert not list(tmp_path.glob(".*partial")), "nothing half-written is left behind"

    cli("export", str(mine), "--task", "topic", "--format", "csv", "--force")
    exported = duckdb.sql(f"SELECT doc_id, text FROM read_csv('{mine}')").fetchall()
    stored = dict(database.execute("SELECT doc_id, text FROM newsgroups_sample").fetchall())
    risky = [doc for doc, text in stored.items() if text[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert risky, "the sample holds texts a spreadsheet would run (the test needs one)"
    for doc, text in exported:
        assert text[:1] not in ("=", "+", "-", "@", "\t", "\r")
        assert text == ("'" + stored[doc] if doc in risky else stored[doc])


@pytest.mark.parametrize("command", ["build", "neighbours", "search", "compare", "export"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as raised:
        main([command, "--help"])
    assert raised.value.code == 0
    assert "usage: qwen-assets " + command in capsys.readouterr().out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["neighbours", "train/sci.space/1", "--task", "topic"],
            "unknown document 'train/sci.space/1'",
        ),
        (
            ["neighbours", DOC, "--task", "mood"],
            "unknown task 'mood'; built tasks: default, sentiment, topic, toxicity",
        ),
        (["search", "   ", "--task", "topic"], "the search text is empty"),
        (["compare", DOC, "--tasks", "topic"], "--tasks needs at least two task names"),
        (["neighbours", DOC, "--task", "topic", "-k", "0"], "-k must be at least 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(cli, arguments, message):
    cli(*arguments, expect=USER_ERROR)
    assert message in cli.err
    assert len(cli.err.strip().splitlines()) == 1 and "Traceback" not in cli.err


def test_a_missing_database_says_to_build_first(cli, server, archive, tmp_path: Path, monkeypatch):
    settings = write_settings(
        tmp_path / "settings.toml", project_settings(tmp_path, server, archive)
    )
    monkeypatch.setenv("QWEN_ASSETS_SETTINGS", str(settings))
    cli("neighbours", DOC, "--task", "topic", expect=USER_ERROR)
    assert "does not exist yet: run `qwen-assets build` first" in cli.err


def test_a_busy_database_waits_then_says_so(
    cli, built, server, archive, tmp_path: Path, monkeypatch
):
    shutil.copyfile(built.database, tmp_path / "warehouse.duckdb")
    raw = project_settings(tmp_path, server, archive)
    raw["storage"]["lock_wait_seconds"] = 1
    monkeypatch.setenv("QWEN_ASSETS_SETTINGS", str(write_settings(tmp_path / "settings.toml", raw)))
    writer = Writer(str(tmp_path / "warehouse.duckdb"))
    try:
        cli("neighbours", DOC, "--task", "topic", expect=USER_ERROR)
    finally:
        writer.release()
    assert f"is busy: process {writer.process.pid} (python" in cli.err
    assert len(cli.err.strip().splitlines()) == 1
    assert (
        json.loads(cli("neighbours", DOC, "--task", "topic", "-k", "1", "--format", "json"))[0][
            "doc_id"
        ]
        == DOC
    )


def test_the_duckdb_1_5_command_line_opens_the_database_and_runs_the_documented_queries(
    built, database
):  # ``database``: the module's reader stays open beside the command line
    """People's DuckDB is often older than the project's: the database they query is written
    in storage.readable_by's format, which the DuckDB 1.5 CLI (duckdb-cli on PyPI) reads."""
    # instruction_effects is empty without [controls] (off here): test_controls runs those.
    for sql in documented_queries():
        if "FROM instruction_effects" not in sql:
            cli_answers_as_python_does(built.database, sql)


def cli_answers_as_python_does(path: str, sql: str) -> None:
    """The DuckDB 1.5 command line gives ``sql`` on the database at ``path`` the rows and
    columns this process's DuckDB gives it, and some rows."""
    answered = subprocess.run(
        [duckdb_1_5_cli(), "-readonly", "-json", path, "-c", sql],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert answered.returncode == 0, answered.stderr
    rows = json.loads(answered.stdout)
    with duckdb.connect(path, read_only=True) as connection:
        expected = run(connection, sql)
    assert len(rows) == len(expected) > 0, sql
    assert list(rows[0]) == list(expected.columns), sql


def test_documented_cluster_query_names_each_labels_main_newsgroup(database):
    result = run(database, documented_query("the labelled clusters of each map"))
    clusters = run(database, "SELECT task, label, size, doc_ids FROM map_clusters")
    groups = run(database, "SELECT doc_id, category FROM newsgroups_sample").set_index("doc_id")
    assert len(result) == len(clusters) and set(result["task"]) == set(TASKS)
    for row in clusters.itertuples():
        counts = groups.loc[list(row.doc_ids), "category"].value_counts()
        (found,) = result[
            (result["task"] == row.task)
            & (result["label"] == row.label)
            & (result["size"] == row.size)
        ]["main_group"]
        assert counts[found] == counts.max(), f"{row.label}: its most common newsgroup"


def test_the_catalog_declares_the_columns_people_query(database):
    """Each table asset's column schema in Dagster's catalog is what the database holds."""
    from qwen_assets.defs.tables import COLUMNS

    for table, columns in COLUMNS.items():
        described = [row[:2] for row in database.execute(f"DESCRIBE {table}").fetchall()]
        assert [name for name, _ in described] == [name for name, _, _ in columns], table
        for (name, kind), (_, declared, _) in zip(described, columns, strict=True):
            pattern = re.escape(declared).replace("dim", r"\d+")
            assert re.fullmatch(pattern, kind), f"{table}.{name} is {kind}, declared {declared}"
