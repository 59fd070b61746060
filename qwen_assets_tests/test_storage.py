"""DuckDB safety: a locked database makes readers wait, then say so, and never corrupts it;
a new embedding size or column rebuilds a table without a manual drop."""

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qwen_assets.defs.embedding_assets import embedding_columns, vectors_table
from qwen_assets.storage import DatabaseBusyError, read_table, replace_partition
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
        with pytest.raises(DatabaseBusyError, match=r"is busy: another process") as raised:
            read_table(database_copy, COUNT, wait_seconds=1.5)
        assert 1.5 <= time.monotonic() - started < 10, "it waited, then gave up"
        assert "Traceback" not in str(raised.value)
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


def test_a_new_embedding_size_rebuilds_the_table_without_a_manual_drop(tmp_path: Path):
    database = str(tmp_path / "warehouse.duckdb")
    rng = np.random.default_rng(0)
    for task in ["default", "topic"]:
        replace_partition(
            database,
            "task_embeddings",
            embedding_columns(8),
            task,
            vectors_table(task, ["a", "b"], rng.normal(size=(2, 8))),
            ["default", "topic"],
        )
    dropped = replace_partition(
        database,
        "task_embeddings",
        embedding_columns(4),
        "topic",
        vectors_table("topic", ["a", "b"], rng.normal(size=(2, 4))),
        ["default", "topic"],
    )
    assert dropped == ["default"], "rows of the old size cannot stay in a FLOAT[4] column"
    kind = read_table(
        database,
        "SELECT data_type FROM information_schema.columns "
        "WHERE table_name = 'task_embeddings' AND column_name = 'embedding'",
    )
    assert kind.iloc[0, 0] == "FLOAT[4]"
    assert read_table(database, COUNT).to_dict("records") == [{"task": "topic", "n": 2}]


def test_a_new_column_rebuilds_the_table_and_reports_what_it_dropped(tmp_path: Path):
    database = str(tmp_path / "warehouse.duckdb")
    narrow = {"task": "VARCHAR", "doc_id": "VARCHAR", "x": "DOUBLE"}
    for task in ["default", "topic"]:
        frame = pd.DataFrame({"task": task, "doc_id": ["a", "b"], "x": [1.0, 2.0]})
        replace_partition(database, "points", narrow, task, frame, ["default", "topic"])
    wide = {**narrow, "y": "DOUBLE"}
    frame = pd.DataFrame({"task": "topic", "doc_id": ["a", "b"], "x": [3.0, 4.0], "y": [5.0, 6.0]})
    dropped = replace_partition(database, "points", wide, "topic", frame, ["default", "topic"])
    stored = read_table(database, "SELECT * FROM points ORDER BY task, doc_id")
    assert list(stored.columns) == ["task", "doc_id", "x", "y"]
    # "default" has no y yet: its rows are dropped (and reported) rather than left half-filled.
    assert dropped == ["default"]
    assert stored["task"].tolist() == ["topic", "topic"]


def test_a_removed_task_disappears_from_the_table(tmp_path: Path):
    database = str(tmp_path / "warehouse.duckdb")
    columns = {"task": "VARCHAR", "doc_id": "VARCHAR"}
    for task in ["default", "topic", "extra"]:
        frame = pd.DataFrame({"task": task, "doc_id": ["a"]})
        replace_partition(database, "rows", columns, task, frame, ["default", "topic", "extra"])
    frame = pd.DataFrame({"task": "topic", "doc_id": ["a"]})
    dropped = replace_partition(database, "rows", columns, "topic", frame, ["default", "topic"])
    assert dropped == ["extra"]
    assert read_table(database, "SELECT DISTINCT task FROM rows ORDER BY 1")["task"].tolist() == [
        "default",
        "topic",
    ]
