"""DuckDB storage: short-lived connections, atomic writes, and clear errors when busy.

DuckDB lets one process write a database file, or many read it, never both. Builds therefore
write a database of their own (``storage.build_database``), one connection and one
transaction at a time so that runs take turns, and :func:`copy_database` copies it whole
to the database people query (``storage.database``), which is replaced, never written in
place: a reader that holds it open never blocks a build. A process that finds a file locked
waits and retries, then says which process holds it. A database is a file path, or
``md:name`` for MotherDuck.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
from filelock import FileLock
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random_exponential

from qwen_assets.errors import StorageError
from qwen_assets.pipeline.pause import pause_point

WAIT_FOR_LOCK_SECONDS = 30.0


class DatabaseBusyError(StorageError):
    pass


class DatabaseMissingError(StorageError):
    pass


class IncompleteStateError(StorageError):
    """The tables do not form one complete state yet, so the database people query keeps the
    last one that did."""


class PartitionMissingError(StorageError):
    """A task's rows that an asset reads are missing or incomplete."""


def is_local_file(database: str) -> bool:
    """A plain path, as opposed to ``:memory:`` or a ``scheme:`` connection string."""
    return database != ":memory:" and not re.match(r"^[a-zA-Z][\w+.-]+:(?!\\)", database)


def shown(database: str) -> str:
    """A database as messages and metadata may show it: a connection string loses its options,
    which can carry a token (``md:name?motherduck_token=...``)."""
    return database.split("?", 1)[0]


def _is_lock_conflict(error: BaseException) -> bool:
    return isinstance(error, duckdb.IOException) and "lock" in str(error).lower()


# DuckDB names the holder of a lock: 'Conflicting lock is held in /usr/bin/python3 (PID 42)',
# adding that one could open it read-only when the holder is itself a reader.
LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.+?) \(PID (?P<pid>\d+)\)")


def lock_holder(error: BaseException) -> str:
    """Who holds the lock, as DuckDB said it: "process 42 (python3.11), which is writing to it"."""
    found = LOCK_HOLDER.search(str(error))
    if found is None:
        return "another process holds it"
    what = "reading it" if "read-only mode" in str(error) else "writing to it"
    return f"process {found['pid']} ({Path(found['program']).name}) is {what}"


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
    except duckdb.Error as error:
        if not _is_lock_conflict(error) and (problem := _disk_problem(error, database)):
            raise problem from None
        if not isinstance(error, duckdb.IOException):
            raise
        if _is_lock_conflict(error):
            raise DatabaseBusyError(
                f"the database {shown(database)} is busy: {lock_holder(error)} (waited "
                f"{wait_seconds:g}s); try again when it is done"
            ) from None
        raise StorageError(
            f"cannot open the database {shown(database)}: {_first_line(error)}"
        ) from None
    try:
        yield connection
    except duckdb.Error as error:
        problem = _disk_problem(error, database)
        if problem is None:
            raise
        raise problem from None
    finally:
        connection.close()


class DatabaseDamagedError(StorageError):
    """A database file that DuckDB opens but cannot read (truncated, corrupted)."""

    def __init__(self, database: str, reason: str) -> None:
        self.reason = reason
        self.damage = f"the database {shown(database)} is damaged ({reason})"
        super().__init__(
            f"{self.damage}: move it aside or delete it, then run `qwen-assets build`, which "
            "rebuilds it (paid vectors are in the embedding cache, a file of its own)"
        )


class DiskFullError(StorageError):
    pass


DAMAGED = re.compile(r"(?i)could not read enough bytes|corrupt|checksum|not a valid duckdb")


def move_aside(database: str) -> Path:
    """A damaged file, kept for whoever wants to look at it, out of the way (with its log)."""
    path = Path(database).expanduser()
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, aside)
    wal = path.with_name(path.name + ".wal")
    if wal.exists():
        os.replace(wal, aside.with_name(aside.name + ".wal"))
    return aside


def _disk_problem(error: BaseException, database: str) -> StorageError | None:
    """What a person can do about an error from a file: the disk is full, or the file is
    damaged (DuckDB opens a truncated file and fails at the first block it lacks)."""
    said = str(error)
    if "No space left on device" in said:
        where = Path(database).expanduser().parent if is_local_file(database) else database
        return DiskFullError(
            f"no space left on the disk of {shown(str(where))} while writing {shown(database)}: "
            "free some space and rerun (what was written before is kept; this write was not)"
        )
    if DAMAGED.search(said):
        return DatabaseDamagedError(database, _first_line(error)[:120])
    return None


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
    write_tables(database, replace={table: frame}, wait_seconds=wait_seconds)


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
    """Add rows to a log-like table (see ``write_tables``)."""
    write_tables(database, append={table: (columns, frame)}, wait_seconds=wait_seconds)


Frame = pd.DataFrame | pa.Table


def write_tables(
    database: str,
    *,
    replace: Mapping[str, Frame] | None = None,
    append: Mapping[str, tuple[dict[str, str], Frame]] | None = None,
    wait_seconds: float = WAIT_FOR_LOCK_SECONDS,
) -> None:
    """Replace whole tables and add rows to log-like ones, all in one transaction: readers,
    and a step that fails half way, see every table changed or none. A log-like table is
    created on first use; a column added since (by an older release) is added to it, empty
    in the older rows."""
    with connect(database, wait_seconds=wait_seconds) as connection:
        connection.execute("BEGIN")
        for number, (table, frame) in enumerate((replace or {}).items()):
            connection.register(f"replacing_{number}", frame)
            connection.execute(
                f'CREATE OR REPLACE TABLE "{table}" AS SELECT * FROM replacing_{number}'
            )
        for number, (table, (columns, frame)) in enumerate((append or {}).items()):
            schema, names = _column_sql(columns)
            connection.register(f"appending_{number}", frame)
            connection.execute(f'CREATE TABLE IF NOT EXISTS "{table}" ({schema})')
            for name, kind in columns.items():
                connection.execute(
                    f'ALTER TABLE "{table}" ADD COLUMN IF NOT EXISTS "{name}" {kind}'
                )
            connection.execute(
                f'INSERT INTO "{table}" ({names}) SELECT {names} FROM appending_{number}'
            )
        connection.execute("COMMIT")


class PartitionShapeError(StorageError):
    """A run would strand other partitions' rows in a table of another shape."""


def replace_partitions(
    database: str,
    table: str,
    columns: dict[str, str],
    frames: Mapping[str, pd.DataFrame | pa.Table],
    configured: Sequence[str],
    *,
    partition_columns: Sequence[str] = ("task",),
    wait_seconds: float = WAIT_FOR_LOCK_SECONDS,
) -> list[str]:
    """Replace the rows of the partitions in ``frames`` of a partitioned table, in one
    transaction: readers, and Dagster, see every partition of the run or none.

    A row's partition is its ``partition_columns`` joined by "/" (its task, or
    ``variant/task``). Only those partitions' rows change, and rows of partitions that are no
    longer ``configured`` are removed. ``columns`` is the table's schema (name -> DuckDB
    type). When it differs from the stored one (another embedding size, a new column) and
    other configured partitions have rows, nothing is written: :class:`PartitionShapeError`
    names them, since such a change makes every partition stale and they must be rebuilt
    together. Returns the removed partitions.
    """
    schema, names = _column_sql(columns)
    casts = ", ".join(f'CAST("{name}" AS {kind})' for name, kind in columns.items())
    partition_sql = _partition_sql(partition_columns)
    with connect(database, wait_seconds=wait_seconds) as connection:
        connection.execute("BEGIN")
        stored = _stored_partitions(connection, table, partition_columns)
        removed = sorted(set(stored or []) - set(configured))
        if stored is None or (stored and _schema(connection, table) != columns):
            others = sorted(set(stored or []) & set(configured) - set(frames))
            if others:
                connection.execute("ROLLBACK")
                old = ", ".join(
                    f"{name} {kind}" for name, kind in _schema(connection, table).items()
                )
                raise PartitionShapeError(
                    f"{table} stores ({old}) for {', '.join(others)}; this run writes "
                    f"({', '.join(f'{n} {k}' for n, k in columns.items())}) for "
                    f"{', '.join(frames)}. Such a change makes every partition stale: "
                    f"materialize all partitions of {table} in one run (or run `qwen-assets "
                    "build`); nothing was written, and computed vectors are cached."
                )
            connection.execute(f'DROP TABLE "{table}"')
        connection.execute(f'CREATE TABLE IF NOT EXISTS "{table}" ({schema})')
        connection.execute(
            f'DELETE FROM "{table}" WHERE list_contains($run, {partition_sql}) '
            f"OR NOT list_contains($configured, {partition_sql})",
            {"run": list(frames), "configured": list(configured)},
        )
        for number, frame in enumerate(frames.values()):
            connection.register(f"incoming_{number}", frame)
            connection.execute(
                f'INSERT INTO "{table}" ({names}) SELECT {casts} FROM incoming_{number}'
            )
        connection.execute("COMMIT")
    return removed


def _partition_sql(columns: Sequence[str]) -> str:
    """A row's partition in SQL: its columns joined by "/" (``task``, or ``variant/task``)."""
    return " || '/' || ".join(f'"{name}"' for name in columns)


def _stored_partitions(
    connection: duckdb.DuckDBPyConnection, table: str, columns: Sequence[str]
) -> list[str] | None:
    """The partitions a table holds rows of; None when its rows have no such partition
    (a table written before it had all of ``columns``)."""
    if not table_exists(connection, table):
        return []
    if not set(columns) <= set(_schema(connection, table)):
        return None
    rows = connection.execute(
        f'SELECT DISTINCT {_partition_sql(columns)} FROM "{table}"'
    ).fetchall()
    return [row[0] for row in rows]


def column_names(connection: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """The table's columns; none when it does not exist."""
    return list(_schema(connection, table)) if table_exists(connection, table) else []


def _schema(connection: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    rows = connection.execute(f'DESCRIBE "{table}"').fetchall()
    return {row[0]: row[1] for row in rows}


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@dataclass(frozen=True)
class PublishedDatabase:
    target: str
    seconds: float
    bytes: int | None  # the file's size; None on MotherDuck
    tables: dict[str, int]  # table -> rows (views are copied too, not counted)


def copy_database(
    source: str,
    target: str,
    *,
    readable_by: str | None = None,
    wait_seconds: float = WAIT_FOR_LOCK_SECONDS,
) -> PublishedDatabase:
    """Make ``target`` a complete copy of ``source`` in one step that readers cannot see half
    of. A file is written beside ``target`` (in DuckDB's storage format of release
    ``readable_by``) and renamed over it: a reader that has ``target`` open keeps the copy
    it opened, and the next connection opens the new one. A copy killed half way leaves a
    hidden file that the next publish removes; ``target`` stays whole. On MotherDuck the copy
    is a zero-copy clone (``COPY FROM DATABASE ... (OVERWRITE)``)."""
    started = time.monotonic()
    with connect(source, read_only=True, wait_seconds=wait_seconds) as connection:
        name = connection.execute("SELECT current_database()").fetchall()[0][0]
        tables = _row_counts(connection)
        if not is_local_file(target):
            _clone_on_motherduck(connection, name, target)
            return PublishedDatabase(shown(target), time.monotonic() - started, None, tables)
        path = Path(target).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path.with_name(f".{path.name}.lock"))):
            for leftover in path.parent.glob(f".{path.name}.publishing-*"):
                leftover.unlink(missing_ok=True)  # a killed publish's file (and its .wal)
            staging = path.with_name(f".{path.name}.publishing-{uuid.uuid4().hex[:8]}")
            version = f", STORAGE_VERSION '{readable_by}'" if readable_by else ""
            try:
                connection.execute(
                    f"ATTACH '{_sql_text(staging)}' AS qwen_assets_published (READ_WRITE{version})"
                )
            except duckdb.InvalidInputException as error:
                raise StorageError(
                    f"storage.readable_by: DuckDB {duckdb.__version__} cannot write the storage "
                    f"format of {readable_by!r} ({_first_line(error)[:120]}...); use e.g. "
                    '"v1.0.0" or "latest"'
                ) from None
            try:
                connection.execute(f'COPY FROM DATABASE "{name}" TO qwen_assets_published')
                connection.execute("DETACH qwen_assets_published")
                _fold_in_a_leftover_log(path)
                pause_point("copy_database:copied")
                with staging.open("rb") as written:
                    os.fsync(written.fileno())
                os.replace(staging, path)
            except BaseException as error:
                for written in path.parent.glob(f"{staging.name}*"):
                    written.unlink(missing_ok=True)
                if isinstance(error, duckdb.Error) and (problem := _disk_problem(error, str(path))):
                    raise problem from None  # the copy's disk, not the source's
                raise
    return PublishedDatabase(str(path), time.monotonic() - started, path.stat().st_size, tables)


def _row_counts(connection: duckdb.DuckDBPyConnection) -> dict[str, int]:
    names = connection.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database() "
        "AND table_type = 'BASE TABLE' ORDER BY table_name"
    ).fetchall()
    return {
        table: connection.execute(f'SELECT count(*) FROM "{table}"').fetchall()[0][0]
        for (table,) in names
    }


def _fold_in_a_leftover_log(path: Path) -> None:
    """A write-ahead log beside ``target`` belongs to the file about to be replaced (someone
    wrote to it read-write and was killed); the new file must not inherit it. Opening the old
    file once folds it in; a session still holding it keeps it and we leave it alone."""
    log = path.with_name(path.name + ".wal")
    if not log.exists():
        return
    with suppress(duckdb.Error):
        duckdb.connect(str(path)).close()


def _clone_on_motherduck(connection: duckdb.DuckDBPyConnection, source: str, target: str) -> None:
    name = shown(target).split(":", 1)[1]
    connection.execute(f'CREATE DATABASE IF NOT EXISTS "{name}"')
    connection.execute(f'COPY FROM DATABASE "{source}" (OVERWRITE) TO "{name}"')


def _sql_text(path: Path) -> str:
    return str(path).replace("'", "''")
