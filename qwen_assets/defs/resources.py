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
from pydantic import Field

from qwen_assets import storage
from qwen_assets.build.runs import RunWorker
from qwen_assets.embedding import EmbeddingStats, build_backend, embed_texts
from qwen_assets.query import create_views
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
            storage.publish_database(
                self.published, self.database, wait_seconds=self.lock_wait_seconds
            )
            context.log.warning(
                f"the builds' database {self.database} did not exist: started it from a copy "
                f"of {self.published}"
            )

    def publish(self) -> storage.PublishedDatabase:
        """Copy every table and view to the database people query, in one step."""
        return storage.publish_database(
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
        """The convenience views over the sample, embeddings and coordinates (see README)."""
        with storage.connect(self.database, wait_seconds=self.lock_wait_seconds) as connection:
            create_views(connection)

    def append(self, table: str, columns: dict[str, str], frame: pd.DataFrame) -> None:
        storage.append_rows(
            self.database, table, columns, frame, wait_seconds=self.lock_wait_seconds
        )

    def replace_partitions(
        self,
        table: str,
        columns: dict[str, str],
        frames: Mapping[str, pd.DataFrame | pa.Table],
        configured_tasks: Sequence[str],
    ) -> list[str]:
        return storage.replace_partitions(
            self.database,
            table,
            columns,
            frames,
            configured_tasks,
            wait_seconds=self.lock_wait_seconds,
        )

    def read_partition(self, table: str, task: str, columns: str) -> pd.DataFrame:
        """One task's rows of a task-partitioned table, in sample order, or one clear error
        naming the partition to build when they do not cover the sample."""
        with storage.connect(
            self.database, read_only=True, wait_seconds=self.lock_wait_seconds
        ) as connection:
            expected = connection.execute("SELECT count(*) FROM newsgroups_sample").fetchone()[0]
            frame = (
                connection.execute(
                    f"""SELECT t.doc_id, {columns} FROM "{table}" t
                        JOIN newsgroups_sample s USING (doc_id)
                        WHERE t.task = ? ORDER BY s.position""",
                    [task],
                ).df()
                if storage.table_exists(connection, table)
                else pd.DataFrame()
            )
        if len(frame) != expected:
            raise storage.PartitionMissingError(
                f"{table}[{task}] has {len(frame)} rows for the {expected} sample documents: "
                f"materialize {table}[{task}] first (or run `qwen-assets build`)"
            )
        return frame


class Embedder(ConfigurableResource):
    """Turns texts into vectors through the chosen backend and the persistent cache."""

    backend: str = Field(description='"http" or "local"')
    backend_reason: str = Field(default="", description="Why this backend was chosen")
    cache_database: str = Field(description="DuckDB path or connection string of the cache")
    api_key: str | None = Field(default=None, description="Set from an EnvVar; never logged")

    def embed(
        self,
        texts: Sequence[str],
        prefix: str,
        settings: EmbeddingSettings,
        log: logging.Logger,
        label: str = "",
    ) -> tuple[np.ndarray, EmbeddingStats]:
        backend = build_backend(self.backend, settings, self.api_key, log)
        return embed_texts(texts, prefix, settings, backend, self.cache_database, log, label)
