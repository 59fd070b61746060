"""A persistent embedding cache in DuckDB, keyed by (model, dimensions, prompt hash).

Paid vectors live here, in their own database file, so a run that fails later, a change of
UMAP settings, or a rebuilt sample never pays for the same prompt twice. The cache also
records each model's vector size once answers have confirmed it (``embedding_sizes``), so
one wrong-size answer can never set the size that every later answer is held to.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
from filelock import FileLock, Timeout

from qwen_assets.pipeline.storage import (
    WAIT_FOR_LOCK_SECONDS,
    DatabaseDamagedError,
    DatabaseMissingError,
    StorageError,
    connect,
    is_local_file,
    shown,
    table_exists,
)

TABLE = "embedding_cache"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    model VARCHAR NOT NULL,
    dimensions INTEGER NOT NULL,          -- 0: the model's full size
    prompt_sha256 VARCHAR NOT NULL,
    embedding FLOAT[] NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (model, dimensions, prompt_sha256)
)
"""


SIZES = "embedding_sizes"
SIZES_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {SIZES} (
    model VARCHAR NOT NULL,
    dimensions INTEGER NOT NULL,
    size INTEGER NOT NULL,                -- the confirmed length of every vector
    PRIMARY KEY (model, dimensions)
)
"""


class CacheUnreadableError(StorageError):
    """The cache file exists but cannot be read (truncated, corrupt)."""


def prompt_key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


class EmbeddingCache:
    def __init__(
        self,
        database: str,
        model: str,
        dimensions: int | None,
        lock_wait_seconds: float = WAIT_FOR_LOCK_SECONDS,
    ) -> None:
        self.database = database
        self.model = model
        self.dimensions = dimensions or 0
        self.lock_wait_seconds = lock_wait_seconds

    def lookup(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``keys`` (of any size: the caller keeps the right one)."""
        if not keys:
            return {}
        with _reading(self.database) as connection:
            if not table_exists(connection, TABLE):
                return {}
            connection.register("wanted", pa.table({"prompt_sha256": list(keys)}))
            found = connection.sql(
                f"""SELECT c.prompt_sha256, c.embedding FROM {TABLE} c
                    JOIN wanted USING (prompt_sha256)
                    WHERE c.model = ? AND c.dimensions = ?""",
                params=[self.model, self.dimensions],
            ).to_arrow_table()
        if found.num_rows == 0:
            return {}
        vectors = _to_matrix(found.column("embedding"))
        return dict(zip(found.column("prompt_sha256").to_pylist(), vectors, strict=True))

    def count_missing(self, keys: Sequence[str], *, wait_seconds: float = 2.0) -> int:
        """How many distinct ``keys`` the cache lacks; it only reads (a build may hold it)."""
        wanted = set(keys)
        try:
            with connect(self.database, read_only=True, wait_seconds=wait_seconds) as connection:
                if not table_exists(connection, TABLE):
                    return len(wanted)
                connection.register("wanted", pa.table({"prompt_sha256": sorted(wanted)}))
                found = connection.execute(
                    f"""SELECT count(*) FROM {TABLE} c JOIN wanted USING (prompt_sha256)
                        WHERE c.model = ? AND c.dimensions = ?""",
                    [self.model, self.dimensions],
                ).fetchone()[0]
        except DatabaseMissingError:
            return len(wanted)
        return len(wanted) - int(found)

    def confirmed_size(self) -> int | None:
        """The vector size answers confirmed for this model and dimensions, if any."""
        with _reading(self.database) as connection:
            if not table_exists(connection, SIZES):
                return None
            row = connection.execute(
                f"SELECT size FROM {SIZES} WHERE model = ? AND dimensions = ?",
                [self.model, self.dimensions],
            ).fetchone()
        return int(row[0]) if row else None

    def confirm_size(self, size: int, *, wait_seconds: float | None = None) -> None:
        wait = self.lock_wait_seconds if wait_seconds is None else wait_seconds
        with connect(self.database, wait_seconds=wait) as connection:
            connection.execute(SIZES_SCHEMA)
            connection.execute(
                f"INSERT INTO {SIZES} VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET size = excluded.size",
                [self.model, self.dimensions, size],
            )

    @contextmanager
    def exclusive(self, log: logging.Logger) -> Iterator[None]:
        """One process at a time looks up and embeds into this cache: two builds over the
        same cache (from two Dagster homes, say) would otherwise both find a prompt missing
        and both pay for it. The second waits, then finds the first one's vectors."""
        if not is_local_file(self.database):
            yield
            return
        path = Path(self.database).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path.with_name(f".{path.name}.embedding.lock")))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("another process is embedding into %s; waiting for it", shown(self.database))
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def store(
        self, keys: Sequence[str], vectors: np.ndarray, *, wait_seconds: float | None = None
    ) -> None:
        """Insert validated vectors. A key already present keeps its vector unless that one
        has another size (left by a release that cached a wrong-size answer)."""
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
        batch = pa.table(
            {
                "prompt_sha256": list(keys),
                "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
            }
        )
        wait = self.lock_wait_seconds if wait_seconds is None else wait_seconds
        with connect(self.database, wait_seconds=wait) as connection:
            connection.execute(SCHEMA)
            connection.register("batch", batch)
            connection.execute(
                f"""INSERT INTO {TABLE} (model, dimensions, prompt_sha256, embedding)
                    SELECT ?, ?, prompt_sha256, embedding::FLOAT[] FROM batch
                    ON CONFLICT DO UPDATE SET embedding = excluded.embedding
                    WHERE len(embedding) <> len(excluded.embedding)""",
                [self.model, self.dimensions],
            )


@contextmanager
def _reading(database: str) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the cache whose file, if damaged (``storage.connect`` tells), is the
    cache's own problem: a build moves it aside and starts a new one."""
    try:
        with connect(database) as connection:
            yield connection
    except DatabaseDamagedError as error:
        if not is_local_file(database):  # a service's database is not ours to move aside
            raise
        raise CacheUnreadableError(
            f"the embedding cache {shown(database)} cannot be read ({error.reason})"
        ) from None


def _to_matrix(column: pa.ChunkedArray) -> list[np.ndarray]:
    return [np.asarray(value, dtype=np.float32) for value in column.to_numpy(zero_copy_only=False)]
