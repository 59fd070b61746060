"""Dagster resources: the DuckDB warehouse and the embedding service.

Resources hold what differs between machines (where the database is, which backend runs,
the API key); the experiment itself (tasks, model, UMAP) comes from the settings file.
"""

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr

from qwen_assets.defs.partitions import MapGrid
from qwen_assets.defs.run_worker import RunWorker
from qwen_assets.pipeline import storage
from qwen_assets.pipeline.embedding import Backend, EmbeddingStats, embed_texts, open_backend
from qwen_assets.pipeline.query import create_views
from qwen_assets.settings import EmbeddingSettings


class Warehouse(ConfigurableResource):
    """The builds' own DuckDB database, where every asset's table is written, and the copy
    of it that people query, published whole from one complete state."""

    database: str = Field(description="The builds' database: a path, or md:NAME")
    published: str = Field(description="The database people query: a path, or md:NAME")
    readable_by: str = Field(
        default="v1.0.0", description="The DuckDB release whose storage format `published` has"
    )
    lock_wait_seconds: float = Field(
        default=storage.WAIT_FOR_LOCK_SECONDS,
        description="How long to wait for another process's lock before giving up",
    )
    worker: RunWorker = Field(description="Records which process runs the run")

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """A project built before builds had a database of their own keeps its tables in the
        one people query: the builds start from a copy of it rather than from nothing."""
        if not storage.is_local_file(self.database) or Path(self.database).exists():
            return
        if storage.is_local_file(self.published) and Path(self.published).exists():
            storage.copy_database(
                self.published, self.database, wait_seconds=self.lock_wait_seconds
            )
            context.log.warning(
                f"the builds' database {self.database} did not exist: started it from a copy "
                f"of {self.published}"
            )

    def copy_to_query_database(self) -> storage.PublishedDatabase:
        """Copy every table and view to the database people query, in one step."""
        return storage.copy_database(
            self.database,
            self.published,
            readable_by=self.readable_by,
            wait_seconds=self.lock_wait_seconds,
        )

    def query(self, sql: str, parameters: Sequence[object] = ()) -> pd.DataFrame:
        return storage.read_table(
            self.database, sql, parameters, wait_seconds=self.lock_wait_seconds
        )

    def replace_table(self, table: str, frame: pd.DataFrame | pa.Table) -> None:
        storage.replace_table(self.database, table, frame, wait_seconds=self.lock_wait_seconds)

    def create_views(self) -> None:
        """The convenience views over the sample, embeddings and coordinates (see docs/querying.md)."""
        with storage.connect(self.database, wait_seconds=self.lock_wait_seconds) as connection:
            create_views(connection)

    def write_tables(
        self,
        replace: Mapping[str, pd.DataFrame | pa.Table],
        append: Mapping[str, tuple[dict[str, str], pd.DataFrame]],
    ) -> None:
        """Replace tables and add rows to log-like ones in one transaction."""
        storage.write_tables(
            self.database, replace=replace, append=append, wait_seconds=self.lock_wait_seconds
        )

    def replace_partitions(
        self,
        table: str,
        columns: dict[str, str],
        frames: Mapping[str, pd.DataFrame | pa.Table],
        grid: MapGrid,
    ) -> list[str]:
        """Replace the rows of the maps in ``frames`` (keyed by their labels, see MapGrid)."""
        return storage.replace_partitions(
            self.database,
            table,
            columns,
            frames,
            [grid.label(key) for key in grid.keys],
            partition_columns=("variant", "task") if grid.gridded else ("task",),
            wait_seconds=self.lock_wait_seconds,
        )

    def read_partition(
        self, table: str, grid: MapGrid, partition_key: str, columns: str
    ) -> pd.DataFrame:
        """One map's rows of a partitioned table, in sample order, or one clear error
        naming the partition to build when they do not cover the sample."""
        variant, task = grid.split(partition_key)
        with storage.connect(
            self.database, read_only=True, wait_seconds=self.lock_wait_seconds
        ) as connection:
            expected = connection.execute("SELECT count(*) FROM newsgroups_sample").fetchone()[0]
            frame = (
                connection.execute(
                    f"""SELECT t.doc_id, {columns} FROM "{table}" t
                        JOIN newsgroups_sample s USING (doc_id)
                        WHERE t.variant = ? AND t.task = ? ORDER BY s.position""",
                    [variant, task],
                ).df()
                if "variant" in storage.column_names(connection, table)
                else pd.DataFrame()
            )
        if len(frame) != expected:
            raise storage.PartitionMissingError(
                f"{table}[{partition_key}] has {len(frame)} rows for the {expected} sample "
                f"documents: materialize {table}[{partition_key}] first (or run "
                "`qwen-assets build`)"
            )
        return frame

    def stored_rows(
        self, table: str, grid: MapGrid, partition_key: str, columns: Sequence[str]
    ) -> pd.DataFrame | None:
        """One map's rows as the last build stored them, whatever the sample is now; None
        when the table, or one of ``columns``, is not there (never built, or built before
        the column existed)."""
        variant, task = grid.split(partition_key)
        with storage.connect(
            self.database, read_only=True, wait_seconds=self.lock_wait_seconds
        ) as connection:
            have = storage.column_names(connection, table)
            if not {"variant", "task", *columns} <= set(have):
                return None
            chosen = ", ".join(f'"{name}"' for name in columns)
            return connection.execute(
                f'SELECT {chosen} FROM "{table}" WHERE variant = ? AND task = ?', [variant, task]
            ).df()


class Embedder(ConfigurableResource):
    """Turns texts into vectors through each variant's backend and the persistent cache. An
    API key is read from the variable the variant names (``http.api_key_env``) when it
    embeds, and goes nowhere else."""

    backends: dict[str, str] = Field(description='Per variant: "http" or "local"')
    backend_reasons: dict[str, str] = Field(
        default_factory=dict, description="Per variant: why this backend was chosen"
    )
    cache_database: str = Field(description="DuckDB path or connection string of the cache")
    # One backend per variant for the whole run (Dagster's documented place for state a
    # resource keeps between calls): what the HTTP client learned of a server, how many
    # requests it sustains and how long they take, carries from one task to the next.
    _opened: dict[str, Backend] = PrivateAttr(default_factory=dict)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._opened = {}  # each run logs to its own log, and learns its server afresh

    def embed(
        self,
        texts: Sequence[str],
        prefix: str,
        variant: str,
        settings: EmbeddingSettings,
        log: logging.Logger,
        label: str = "",
    ) -> tuple[np.ndarray, EmbeddingStats]:
        backend = self._opened.get(variant)
        if backend is None:
            backend = self._opened[variant] = open_backend(self.backends[variant], settings, log)
        return embed_texts(texts, prefix, settings, backend, self.cache_database, log, label)
