"""A persistent embedding cache in DuckDB, keyed by (model, dimensions, prompt hash).

Paid vectors live here, in their own database file, so a run that fails later, a change of
UMAP settings, or a rebuilt sample never pays for the same prompt twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from qwen_assets.storage import DatabaseMissingError, connect, table_exists

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


def prompt_key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


class EmbeddingCache:
    def __init__(self, database: str, model: str, dimensions: int | None) -> None:
        self.database = database
        self.model = model
        self.dimensions = dimensions or 0

    def lookup(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``keys``."""
        if not keys:
            return {}
        with connect(self.database) as connection:
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

    def store(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Insert validated vectors; a key already present keeps its first vector."""
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
        batch = pa.table(
            {
                "prompt_sha256": list(keys),
                "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
            }
        )
        with connect(self.database) as connection:
            connection.execute(SCHEMA)
            connection.register("batch", batch)
            connection.execute(
                f"""INSERT INTO {TABLE} (model, dimensions, prompt_sha256, embedding)
                    SELECT ?, ?, prompt_sha256, embedding::FLOAT[] FROM batch
                    ON CONFLICT DO NOTHING""",
                [self.model, self.dimensions],
            )


def _to_matrix(column: pa.ChunkedArray) -> list[np.ndarray]:
    return [np.asarray(value, dtype=np.float32) for value in column.to_numpy(zero_copy_only=False)]
