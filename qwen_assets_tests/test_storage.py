"""DuckDB safety: a locked database makes readers wait, then say so, and never corrupts it;
a run writes only its own partitions, all at once, and a change of shape that would strand
other partitions' rows is refused with a message naming them."""

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qwen_assets.defs.embedding_assets import embedding_columns, vectors_table
from qwen_assets.storage import (
    DatabaseBusyError,
    PartitionShapeError,
    read_table,
    replace_partitions,
)
from qwen_assets_tests.conftest import Writer

COUNT = "SELECT task, count(*) AS n FROM task_embeddings GROUP BY task ORDER BY task"


@pytest.fixture
def database_copy(built, tmp_path: Path) -> str:
    copy = tmp_path / "warehouse.duckdb"
    shutil.copyfile(built.database, copy)
    return str(copy)


def test_a_reader_gives_up_with_a_clear_message_and_the_database_survives(database_copy):
    before = read_table(database_copy, COUNT)
    writer = Writer(database_copy)
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseBusyError) as raised:
            read_table(database_copy, COUNT, wait_seconds=1.5)
        assert 1.5 <= time.monotonic() - started < 10, "it waited, then gave up"
        assert database_copy in str(raised.value) and "1.5s" in str(raised.value), (
            "the message names the database and how long it waited"
        )
        assert f"process {writer.process.pid} (python" in str(raised.value), "and who holds it"
        assert "is writing to it" in str(raised.value)
    finally:
        writer.release()
    pd.testing.assert_frame_equal(read_table(database_copy, COUNT), before)


def test_a_reader_waits_for_a_short_write_to_finish(database_copy):
    before = read_table(database_copy, COUNT)
    writer = Writer(database_copy)
    releaser = threading.Timer(1.5, writer.release)
    releaser.start()
    started = time.monotonic()
    try:
        during = read_table(database_copy, COUNT, wait_seconds=30)
    finally:
        releaser.join()
    assert time.monotonic() - started >= 1.4, "it could not read while the lock was held"
    pd.testing.assert_frame_equal(during, before)


def write(database, table, columns, frames, tasks=("default", "topic")):
    return replace_partitions(database, table, columns, frames, list(tasks))


def stored(database: str, table: str = "task_embeddings") -> list[dict]:
    return read_table(
        database,
        f"SELECT task, count(*) AS n, any_value(typeof(embedding)) AS kind FROM {table} "
        "GROUP BY task ORDER BY task",
    ).to_dict("records")


def test_a_new_embedding_size_for_one_partition_is_refused_and_writes_nothing(tmp_path: Path):
    database = str(tmp_path / "warehouse.duckdb")
    rng = np.random.default_rng(0)
    for task in ["default", "topic"]:
        write(
            database,
            "task_embeddings",
            embedding_columns(8),
            {task: vectors_table(task, ["a", "b"], rng.normal(size=(2, 8)))},
        )
    before = stored(database)
    with pytest.raises(PartitionShapeError, match=r"stores .* for default; .* materialize all"):
        write(
            database,
            "task_embeddings",
            embedding_columns(4),
            {"topic": vectors_table("topic", ["a", "b"], rng.normal(size=(2, 4)))},
        )
    assert stored(database) == before, "the other partition's rows are still there, untouched"


def test_a_new_embedding_size_for_every_partition_takes_the_new_shape(tmp_path: Path):
    database = str(tmp_path / "warehouse.duckdb")
    rng = np.random.default_rng(0)
    frames = {
        task: vectors_table(task, ["a", "b"], rng.normal(size=(2, 8)))
        for task in ["default", "topic"]
    }
    write(database, "task_embeddings", embedding_columns(8), frames)
    smaller = {
        task: vectors_table(task, ["a", "b"], rng.normal(size=(2, 4)))
        for task in ["default", "topic"]
    }
    write(database, "task_embeddings", embedding_columns(4), smaller)
    assert stored(database) == [
        {"task": "default", "n": 2, "kind": "FLOAT[4]"},
        {"task": "topic", "n": 2, "kind": "FLOAT[4]"},
    ]


def test_a_run_writes_only_its_own_partitions(tmp_path: Path):
    database = str(tmp_path / "warehouse.duckdb")
    columns = {"task": "VARCHAR", "doc_id": "VARCHAR", "x": "DOUBLE"}
    frames = {
        task: pd.DataFrame({"task": task, "doc_id": ["a", "b"], "x": [1.0, 2.0]})
        for task in ["default", "topic"]
    }
    write(database, "points", columns, frames)
    write(
        database,
        "points",
        columns,
        {"topic": pd.DataFrame({"task": "topic", "doc_id": ["a"], "x": [9.0]})},
    )
    rows = read_table(database, "SELECT task, doc_id, x FROM points ORDER BY task, doc_id")
    assert rows.to_dict("records") == [
        {"task": "default", "doc_id": "a", "x": 1.0},
        {"task": "default", "doc_id": "b", "x": 2.0},
        {"task": "topic", "doc_id": "a", "x": 9.0},
    ]


def test_a_removed_task_disappears_from_the_table(tmp_path: Path):
    database = str(tmp_path / "warehouse.duckdb")
    columns = {"task": "VARCHAR", "doc_id": "VARCHAR"}
    for task in ["default", "topic", "extra"]:
        frame = pd.DataFrame({"task": task, "doc_id": ["a"]})
        write(database, "rows", columns, {task: frame}, ["default", "topic", "extra"])
    frame = pd.DataFrame({"task": "topic", "doc_id": ["a"]})
    removed = write(database, "rows", columns, {"topic": frame}, ["default", "topic"])
    assert removed == ["extra"]
    assert read_table(database, "SELECT DISTINCT task FROM rows ORDER BY 1")["task"].tolist() == [
        "default",
        "topic",
    ]
