"""task_instructions (observed) -> task_embeddings, one partition per map (see partitions)."""

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
    asset,
    observable_source_asset,
)

from qwen_assets.defs.metadata import (
    PARTITION_VERSION_METADATA,
    SOURCE_VERSION_METADATA,
    check_result,
    failed_check_metadata,
    rows_version,
    run_data_version,
)
from qwen_assets.defs.partitions import MapGrid
from qwen_assets.defs.resources import Embedder, Warehouse
from qwen_assets.defs.tables import table_metadata
from qwen_assets.pipeline.checks import embedding_problems
from qwen_assets.pipeline.embedding import EmbeddingResponseError
from qwen_assets.pipeline.embedding.identity import prompt_prefix
from qwen_assets.pipeline.pause import pause_point
from qwen_assets.settings import BASE_VARIANT, Settings, fingerprint

EMBEDDINGS_CODE_VERSION = fingerprint({"embeddings": 2})
POOL = "duckdb"


def embedding_columns(dimension: int | None) -> dict[str, str]:
    """The table's schema; ``dimension`` None when variants may differ in size (a list)."""
    vector = f"FLOAT[{dimension}]" if dimension else "FLOAT[]"
    return {"variant": "VARCHAR", "task": "VARCHAR", "doc_id": "VARCHAR", "embedding": vector}


def vectors_table(
    task: str, doc_ids: list[str], vectors: np.ndarray, variant: str = BASE_VARIANT
) -> pa.Table:
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
    return pa.table(
        {
            "variant": [variant] * len(doc_ids),
            "task": [task] * len(doc_ids),
            "doc_id": doc_ids,
            "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
        }
    )


def embedding_assets(
    settings: Settings, grid: MapGrid, sample: AssetsDefinition
) -> list[AssetsDefinition | SourceAsset]:
    @observable_source_asset(
        partitions_def=grid.partitions_def,
        group_name="embeddings",
        description="Each map's prompt (template + instruction) with the model and size. Its "
        "data version changes exactly when that map's vectors would, which makes just that "
        "task_embeddings partition stale.",
    )
    def task_instructions() -> DataVersionsByPartition:
        return DataVersionsByPartition({key: grid.prompt_version(key) for key in grid.keys})

    @asset(
        partitions_def=grid.partitions_def,
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
        description="The sample embedded with each task's instruction (as each variant embeds): "
        "table task_embeddings (variant, task, doc_id, embedding FLOAT[dim]). Only prompts "
        "missing from the cache are paid for.",
    )
    def task_embeddings(
        context: AssetExecutionContext, warehouse: Warehouse, embedder: Embedder
    ) -> Iterator[MaterializeResult]:
        pause_point("asset:task_embeddings")
        sample = warehouse.query("SELECT doc_id, text FROM newsgroups_sample ORDER BY position")
        doc_ids, texts = sample["doc_id"].tolist(), sample["text"].tolist()
        problems: dict[str, list[str]] = {}
        tables: dict[str, pa.Table] = {}
        dimensions: dict[str, set[int]] = {}
        versions: dict[str, str] = {}
        for key in context.partition_keys:
            variant, task = grid.split(key)
            embedding = settings.embedding_of(variant)
            context.log.info(
                "%s: embedding backend %s (%s)",
                grid.label(key),
                embedder.backends[variant],
                embedder.backend_reasons.get(variant, ""),
            )
            vectors, stats = embedder.embed(
                texts,
                prompt_prefix(settings, task, variant),
                variant,
                embedding,
                context.log,
                grid.label(key),
            )
            dimensions.setdefault(variant, set()).add(vectors.shape[1])
            tables[grid.label(key)] = vectors_table(task, doc_ids, vectors, variant)
            problems[key] = embedding_problems(vectors, len(doc_ids), embedding.dimensions)
            versions[key] = rows_version(grid.prompt_version(key), doc_ids, vectors)
            context.add_asset_metadata(
                {
                    "table": "task_embeddings",
                    "dagster/row_count": len(doc_ids),
                    "dimension": vectors.shape[1],
                    "instruction": settings.instruction_of(task) or "(none)",
                    **({"variant": variant, "model": embedding.model} if grid.gridded else {}),
                    SOURCE_VERSION_METADATA: grid.prompt_version(key),
                    PARTITION_VERSION_METADATA: versions[key],
                    **stats.as_metadata(),
                    **failed_check_metadata(problems[key]),
                },
                partition_key=key,
            )
        mixed = {variant: sorted(sizes) for variant, sizes in dimensions.items() if len(sizes) > 1}
        if mixed:
            variant, sizes = next(iter(mixed.items()))
            raise EmbeddingResponseError(
                f"the backend returned vectors of sizes {sizes} within one run"
                + (f" of variant {variant!r}" if grid.gridded else "")
                + "; set embedding.dimensions to fix one size"
            )
        # Variants may differ in size, so with variants the column is a list (FLOAT[]).
        size = None if grid.gridded else next(iter(dimensions.values())).pop()
        # Every partition of the run in one transaction: the table never runs ahead of Dagster.
        removed = warehouse.replace_partitions(
            "task_embeddings", embedding_columns(size), tables, grid
        )
        if removed:
            context.log.info(
                "removed rows of maps no longer configured: %s (their vectors stay cached)",
                ", ".join(removed),
            )
        yield MaterializeResult(
            check_results=[check_result("unit_vectors_for_every_document", problems)],
            data_version=run_data_version(versions),
        )

    return [task_instructions, task_embeddings]
