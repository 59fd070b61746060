"""DuckDB storage: short-lived connections, atomic writes, and clear errors when busy.

DuckDB lets one process write a database file at a time. Every write here opens a
connection, does one transaction and closes it, so concurrent runs take turns instead of
failing; a process that finds the file locked waits and retries, then says the database is
busy. A database is any DuckDB connection string: a file path, or ``md:name`` for MotherDuck.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random_exponential

WAIT_FOR_LOCK_SECONDS = 30.0


class StorageError(RuntimeError):
    """A database problem a user can act on; the message says which."""


class DatabaseBusyError(StorageError):
    pass


class DatabaseMissingError(StorageError):
    pass


class PartitionMissingError(StorageError):
    """A task's rows that an asset reads are missing or incomplete."""


def is_local_file(database: str) -> bool:
    """A plain path, as opposed to ``:memory:`` or a ``scheme:`` connection string."""
    return database != ":memory:" and not re.match(r"^[a-zA-Z][\w+.-]+:(?!\\)", database)


def _is_lock_conflict(error: BaseException) -> bool:
    return isinstance(error, duckdb.IOException) and "lock" in str(error).lower()


@contextmanager
def connect(
    database: str, *, read_only: bool = False, wait_seconds: float = WAIT_FOR_LOCK_SECONDS
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection that is closed on exit; waits up to ``wait_seconds`` for a lock."""
    if is_local_file(database):
        path = Path(database).expanduser()
        if read_only and not path.exists():
            raise DatabaseMissingError(
                f"the database {database} does not exist yet: run `qwen-assets build` first"
            )
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        database = str(path)
    retrying = Retrying(
        retry=retry_if_exception(_is_lock_conflict),
        wait=wait_random_exponential(multiplier=0.05, max=1.0),
        stop=stop_after_delay(wait_seconds),
        reraise=True,
    )
    try:
        connection = retrying(duckdb.connect, database, read_only=read_only)
    except duckdb.IOException as error:
        if _is_lock_conflict(error):
            raise DatabaseBusyError(
                f"the database {database} is busy: another process (a running materialization?) "
                f"has held it for {wait_seconds:g}s; try again when it finishes"
            ) from None
        raise StorageError(f"cannot open the database {database}: {error}") from None
    try:
        yield connection
    finally:
        connection.close()


def table_exists(connection: duckdb.DuckDBPyConnection, table: str) -> bool:
    found = connection.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
    ).fetchall()
    return bool(found[0][0])


def read_table(
    database: str,
    query: str,
    parameters: Sequence[object] = (),
    *,
    wait_seconds: float = WAIT_FOR_LOCK_SECONDS,
) -> pd.DataFrame:
    with connect(database, read_only=True, wait_seconds=wait_seconds) as connection:
        return connection.execute(query, list(parameters)).df()


def replace_table(
    database: str, table: str, frame: pd.DataFrame, *, wait_seconds: float = WAIT_FOR_LOCK_SECONDS
) -> None:
    """Swap in a whole table in one transaction: readers see the old or the new, never half."""
    with connect(database, wait_seconds=wait_seconds) as connection:
        connection.register("incoming", frame)
        connection.execute("BEGIN")
        connection.execute(f'CREATE OR REPLACE TABLE "{table}" AS SELECT * FROM incoming')
        connection.execute("COMMIT")


def _column_sql(columns: dict[str, str]) -> tuple[str, str]:
    """(``"a" INT, "b" VARCHAR``, ``"a", "b"``) for a name -> DuckDB type map."""
    schema = ", ".join(f'"{name}" {kind}' for name, kind in columns.items())
    return schema, ", ".join(f'"{name}"' for name in columns)


def append_rows(
    database: str,
    table: str,
    columns: dict[str, str],
    frame: pd.DataFrame,
    *,
    wait_seconds: float = WAIT_FOR_LOCK_SECONDS,
) -> None:
    """Add rows to a log-like table, creating it on first use."""
    schema, names = _column_sql(columns)
    with connect(database, wait_seconds=wait_seconds) as connection:
        connection.register("incoming", frame)
        connection.execute("BEGIN")
        connection.execute(f'CREATE TABLE IF NOT EXISTS "{table}" ({schema})')
        connection.execute(f'INSERT INTO "{table}" ({names}) SELECT {names} FROM incoming')
        connection.execute("COMMIT")


class PartitionShapeError(StorageError):
    """A run would strand other partitions' rows in a table of another shape."""


def replace_partitions(
    database: str,
    table: str,
    columns: dict[str, str],
    frames: Mapping[str, pd.DataFrame | pa.Table],
    configured_tasks: Sequence[str],
    *,
    wait_seconds: float = WAIT_FOR_LOCK_SECONDS,
) -> list[str]:
    """Replace the rows of the tasks in ``frames`` of a task-partitioned table, in one
    transaction: readers, and Dagster, see every partition of the run or none.

    Only those tasks' rows change, and rows of tasks that are no longer configured (they are
    no partition any more) are removed. ``columns`` is the table's schema (name -> DuckDB
    type). When it differs from the stored one (another embedding size, a new column) and
    other configured tasks have rows, nothing is written: :class:`PartitionShapeError` names
    them, since such a change makes every partition stale and they must be rebuilt together.
    Returns the removed tasks.
    """
    schema, names = _column_sql(columns)
    casts = ", ".join(f'CAST("{name}" AS {kind})' for name, kind in columns.items())
    with connect(database, wait_seconds=wait_seconds) as connection:
        connection.execute("BEGIN")
        stored = _stored_tasks(connection, table)
        removed = sorted(set(stored) - set(configured_tasks))
        if stored and _schema(connection, table) != columns:
            others = sorted(set(stored) & set(configured_tasks) - set(frames))
            if others:
                connection.execute("ROLLBACK")
                old = ", ".join(
                    f"{name} {kind}" for name, kind in _schema(connection, table).items()
                )
                raise PartitionShapeError(
                    f"{table} stores ({old}) for {', '.join(others)}; this run writes "
                    f"({', '.join(f'{n} {k}' for n, k in columns.items())}) for "
                    f"{', '.join(frames)}. Such a change makes every task stale: materialize "
                    f"all partitions of {table} in one run (or run `qwen-assets build`); "
                    "nothing was written, and computed vectors are cached."
                )
            connection.execute(f'DROP TABLE "{table}"')
        connection.execute(f'CREATE TABLE IF NOT EXISTS "{table}" ({schema})')
        connection.execute(
            f'DELETE FROM "{table}" WHERE list_contains(?, task) OR NOT list_contains(?, task)',
            [list(frames), list(configured_tasks)],
        )
        for number, frame in enumerate(frames.values()):
            connection.register(f"incoming_{number}", frame)
            connection.execute(
                f'INSERT INTO "{table}" ({names}) SELECT {casts} FROM incoming_{number}'
            )
        connection.execute("COMMIT")
    return removed


def _stored_tasks(connection: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    if not table_exists(connection, table):
        return []
    rows = connection.execute(f'SELECT DISTINCT task FROM "{table}"').fetchall()
    return [row[0] for row in rows]


def _schema(connection: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    rows = connection.execute(f'DESCRIBE "{table}"').fetchall()
    return {row[0]: row[1] for row in rows}
