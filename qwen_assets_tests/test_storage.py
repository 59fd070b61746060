"""DuckDB safety: a locked database makes readers wait, then say so, and never corrupts it;
a run writes only its own partitions, all at once, and a change of shape that would strand
other partitions' rows is refused with a message naming them."""

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qwen_assets.defs.embedding_assets import embedding_columns, vectors_table
from qwen_assets.pipeline.storage import (
    DatabaseBusyError,
    PartitionShapeError,
    StorageError,
    append_rows,
    connect,
    copy_database,
    read_table,
    replace_partitions,
    replace_table,
    shown,
)
from qwen_assets_tests.conftest import SmallDisk, Writer, duckdb_1_5_cli

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


HOLD_READ_ONLY = """
import sys, duckdb
connection = duckdb.connect(sys.argv[1], read_only=True)
print(connection.execute("SELECT count(*) FROM rows").fetchall()[0][0], flush=True)
sys.stdin.readline()
print(connection.execute("SELECT count(*) FROM rows").fetchall()[0][0], flush=True)
"""


def rows_table(database: str, count: int) -> None:
    replace_table(database, "rows", pd.DataFrame({"n": range(count)}))


def hold_read_only(database: str) -> subprocess.Popen:
    """Another process holding ``database`` open read-only, as a notebook does; it prints the
    rows it sees, and again on each line written to it."""
    return subprocess.Popen(
        [sys.executable, "-c", HOLD_READ_ONLY, database],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_reader_never_delays_a_publish_and_keeps_the_state_it_opened(tmp_path: Path):
    build, published = str(tmp_path / "build.duckdb"), str(tmp_path / "query.duckdb")
    rows_table(build, 3)
    copy_database(build, published, readable_by="v1.0.0")
    reader = hold_read_only(published)
    try:
        assert reader.stdout.readline().strip() == "3"
        rows_table(build, 5)
        # wait_seconds=0: a publish that had to wait for the reader would fail here.
        again = copy_database(build, published, readable_by="v1.0.0", wait_seconds=0)
        assert again.tables == {"rows": 5}
        assert read_table(published, "SELECT count(*) FROM rows").iloc[0, 0] == 5
        reader.stdin.write("\n")
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == "3", "the reader keeps what it opened"
    finally:
        reader.kill()
        reader.wait()
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        ".query.duckdb.lock",
        "build.duckdb",
        "query.duckdb",
    ], "no copy left beside it"


def test_a_writer_told_busy_learns_that_a_reader_holds_the_file(tmp_path: Path):
    database = str(tmp_path / "query.duckdb")
    rows_table(database, 1)
    reader = hold_read_only(database)
    try:
        reader.stdout.readline()
        with pytest.raises(DatabaseBusyError) as raised:
            rows_table_waiting(database)
    finally:
        reader.kill()
        reader.wait()
    message = str(raised.value)
    assert f"process {reader.pid} (python" in message and "is reading it" in message
    assert "materialization" not in message, "it never guesses who holds it"


def rows_table_waiting(database: str) -> None:
    with connect(database, wait_seconds=0.5) as connection:
        connection.execute("CREATE OR REPLACE TABLE rows AS SELECT 1 AS n")


def test_a_storage_format_duckdb_does_not_know_is_one_line_and_publishes_nothing(
    tmp_path: Path,
):
    build, published = str(tmp_path / "build.duckdb"), str(tmp_path / "query.duckdb")
    rows_table(build, 2)
    with pytest.raises(StorageError) as raised:
        copy_database(build, published, readable_by="v0.0.9")
    assert str(raised.value).startswith("storage.readable_by: DuckDB ")
    assert "\n" not in str(raised.value)
    assert not Path(published).exists()
    assert not list(tmp_path.glob(".query.duckdb.publishing-*"))


def test_readable_by_names_the_oldest_duckdb_that_opens_the_copy(tmp_path: Path):
    """ "v1.0.0" and "v1.5.0" copies open in DuckDB 1.5; "latest" is the running DuckDB's own
    format, which only that release and later open (DuckDB 1.5 says it cannot read it)."""
    import duckdb

    build = str(tmp_path / "build.duckdb")
    rows_table(build, 4)
    cli = duckdb_1_5_cli()
    opened = {}
    for release in ["v1.0.0", "v1.5.0", "latest"]:
        published = tmp_path / f"{release}.duckdb"
        copy_database(build, str(published), readable_by=release)
        with duckdb.connect(str(published), read_only=True) as connection:
            (tags,) = connection.execute(
                "SELECT tags FROM duckdb_databases() WHERE database_name = current_database()"
            ).fetchone()
            assert read_table(str(published), "SELECT count(*) FROM rows").iloc[0, 0] == 4
        running = "v" + ".".join(duckdb.__version__.split(".")[:2])
        expected = running if release == "latest" else release.rsplit(".", 1)[0]
        assert tags["storage_version"].startswith(expected), (release, tags)
        answered = subprocess.run(
            [
                cli,
                "-readonly",
                "-csv",
                "-noheader",
                str(published),
                "-c",
                "SELECT count(*) FROM rows",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        opened[release] = answered.stdout.strip() == "4"
        if not opened[release]:
            assert "can only read versions" in answered.stderr, answered.stderr
    newer_than_1_5 = tuple(int(part) for part in duckdb.__version__.split(".")[:2]) > (1, 5)
    assert opened == {"v1.0.0": True, "v1.5.0": True, "latest": not newer_than_1_5}


def test_a_motherduck_token_in_the_settings_is_refused_without_echoing_it():
    """Dagster stores resource settings with every run: a token in a connection string would
    land there, so it belongs in the motherduck_token variable, and the message says so."""
    from qwen_assets.settings import SettingsError, parse_settings
    from qwen_assets.testing import settings_dict

    for key in ("database", "embedding_cache"):
        with pytest.raises(SettingsError) as raised:
            parse_settings(settings_dict(storage={key: "md:maps?motherduck_token=tok-SECRET"}))
        assert f"storage.{key}: holds a token: set it in the motherduck_token" in str(raised.value)
        assert "SECRET" not in str(raised.value)
    storage = parse_settings(
        settings_dict(storage={"database": "md:maps?attach_mode=single"})
    ).storage
    assert storage.build_database == "md:maps_build?attach_mode=single"
    assert shown(storage.database) == "md:maps"


def test_a_log_table_of_an_older_release_gains_the_new_columns(tmp_path: Path):
    """site_builds from before variants: the next build's row still lands, and the old rows
    stay, with the new column empty."""
    database = str(tmp_path / "warehouse.duckdb")
    old = {"built_at": "TIMESTAMP", "tasks": "VARCHAR[]"}
    append_rows(
        database, "log", old, pd.DataFrame({"built_at": [pd.Timestamp(0)], "tasks": [["a"]]})
    )
    new = {**old, "variants": "VARCHAR[]"}
    row = pd.DataFrame({"built_at": [pd.Timestamp(1)], "tasks": [["a"]], "variants": [["v"]]})
    append_rows(database, "log", new, row)
    rows = read_table(database, "SELECT tasks, variants FROM log ORDER BY built_at")
    assert rows["variants"].isna().tolist() == [True, False]
    assert list(rows["variants"].tolist()[1]) == ["v"]
    assert len(rows) == 2


def test_a_full_disk_is_one_line_saying_so_and_the_table_keeps_its_last_state(tmp_path: Path):
    """A real full disk (a small tmpfs) under a database being written: one line naming the
    disk, and the table as it was before the write."""
    from qwen_assets.pipeline.storage import DiskFullError

    with SmallDisk(tmp_path / "disk", megabytes=2) as disk:
        database = str(disk.path / "warehouse.duckdb")
        rows_table(database, 10)
        disk.fill()
        with pytest.raises(DiskFullError) as full:
            rows_table(database, 200_000)
        said = str(full.value)
        assert said.startswith(f"no space left on the disk of {disk.path} while writing {database}")
        assert "\n" not in said
        disk.free()
        assert read_table(database, "SELECT count(*) FROM rows").iloc[0, 0] == 10
