"""task_instructions (observed) -> task_embeddings, one partition per task."""

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    DataVersionsByPartition,
    MaterializeResult,
    SourceAsset,
    StaticPartitionsDefinition,
    asset,
    observable_source_asset,
)

from qwen_assets.build.stale import SOURCE_VERSION_METADATA
from qwen_assets.checks import embedding_problems
from qwen_assets.defs.metadata import check_result, failed_check_metadata
from qwen_assets.defs.resources import Embedder, Warehouse
from qwen_assets.defs.tables import table_metadata
from qwen_assets.embedding import EmbeddingResponseError
from qwen_assets.settings import Settings, fingerprint

EMBEDDINGS_CODE_VERSION = fingerprint({"embeddings": 1})
POOL = "duckdb"


def embedding_columns(dimension: int) -> dict[str, str]:
    return {"task": "VARCHAR", "doc_id": "VARCHAR", "embedding": f"FLOAT[{dimension}]"}


def vectors_table(task: str, doc_ids: list[str], vectors: np.ndarray) -> pa.Table:
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
    return pa.table(
        {
            "task": [task] * len(doc_ids),
            "doc_id": doc_ids,
            "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
        }
    )


def embedding_assets(
    settings: Settings, tasks: StaticPartitionsDefinition, sample: AssetsDefinition
) -> list[AssetsDefinition | SourceAsset]:
    @observable_source_asset(
        partitions_def=tasks,
        group_name="embeddings",
        description="Each task's prompt (template + instruction) with the model and size. Its "
        "data version changes exactly when that task's vectors would, which makes just that "
        "task_embeddings partition stale.",
    )
    def task_instructions() -> DataVersionsByPartition:
        return DataVersionsByPartition(
            {task: settings.task_version(task) for task in settings.task_names}
        )

    @asset(
        partitions_def=tasks,
        group_name="embeddings",
        deps=[sample, task_instructions],
        code_version=EMBEDDINGS_CODE_VERSION,
        metadata=table_metadata("task_embeddings"),
        pool=POOL,
        backfill_policy=BackfillPolicy.single_run(),
        kinds={"duckdb", "python"},
        check_specs=[
            AssetCheckSpec(
                "unit_vectors_for_every_document",
                asset="task_embeddings",
                blocking=True,
                description="One finite unit-length vector of the configured size per document.",
            )
        ],
        description="The sample embedded with each task's instruction: table task_embeddings "
        "(task, doc_id, embedding FLOAT[dim]). Only prompts missing from the cache are paid for.",
    )
    def task_embeddings(
        context: AssetExecutionContext, warehouse: Warehouse, embedder: Embedder
    ) -> Iterator[MaterializeResult]:
        sample = warehouse.query("SELECT doc_id, text FROM newsgroups_sample ORDER BY position")
        doc_ids, texts = sample["doc_id"].tolist(), sample["text"].tolist()
        context.log.info("embedding backend: %s (%s)", embedder.backend, embedder.backend_reason)
        problems: dict[str, list[str]] = {}
        tables: dict[str, pa.Table] = {}
        dimensions = set()
        for task in context.partition_keys:
            vectors, stats = embedder.embed(
                texts, settings.prompt_prefix(task), settings.embedding, context.log, task
            )
            dimensions.add(vectors.shape[1])
            tables[task] = vectors_table(task, doc_ids, vectors)
            problems[task] = embedding_problems(
                vectors, len(doc_ids), settings.embedding.dimensions
            )
            context.add_asset_metadata(
                {
                    "table": "task_embeddings",
                    "dagster/row_count": len(doc_ids),
                    "dimension": vectors.shape[1],
                    "instruction": settings.tasks[task].instruction or "(none)",
                    SOURCE_VERSION_METADATA: settings.task_version(task),
                    **stats.as_metadata(),
                    **failed_check_metadata(problems[task]),
                },
                partition_key=task,
            )
        if len(dimensions) > 1:
            raise EmbeddingResponseError(
                f"the backend returned vectors of sizes {sorted(dimensions)} within one run; "
                "set embedding.dimensions to fix one size"
            )
        # Every partition of the run in one transaction: the table never runs ahead of Dagster.
        removed = warehouse.replace_partitions(
            "task_embeddings", embedding_columns(dimensions.pop()), tables, settings.task_names
        )
        if removed:
            context.log.info(
                "removed rows of tasks no longer configured: %s (their vectors stay cached)",
                ", ".join(removed),
            )
        yield MaterializeResult(
            check_results=[check_result("unit_vectors_for_every_document", problems)]
        )

    return [task_instructions, task_embeddings]
