"""task_embeddings -> umap_coordinates, one partition per task, aligned onto the reference task."""

import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    MaterializeResult,
    StaticPartitionMapping,
    StaticPartitionsDefinition,
    asset,
)

from qwen_assets.checks import coordinate_problems
from qwen_assets.defs.metadata import check_result, failed_check_metadata
from qwen_assets.defs.resources import Warehouse
from qwen_assets.defs.tables import table_metadata
from qwen_assets.projection import align, umap_layout
from qwen_assets.settings import Settings, fingerprint

COORDINATE_COLUMNS = {
    "task": "VARCHAR",
    "doc_id": "VARCHAR",
    "x": "DOUBLE",
    "y": "DOUBLE",
    "x_aligned": "DOUBLE",
    "y_aligned": "DOUBLE",
}


def load_embeddings(warehouse: Warehouse, task: str) -> tuple[list[str], np.ndarray]:
    """One task's vectors in sample order (a clear error when the partition is not built)."""
    frame = warehouse.read_partition("task_embeddings", task, "t.embedding")
    return frame["doc_id"].tolist(), np.stack(frame["embedding"].to_numpy()).astype(np.float32)


def projection_assets(
    settings: Settings, tasks: StaticPartitionsDefinition, embeddings: AssetsDefinition
) -> list[AssetsDefinition]:
    reference = settings.umap.align_to
    # Each task's map depends on its own vectors and, for the alignment, on the reference's.
    mapping = StaticPartitionMapping(
        {
            task: (settings.task_names if task == reference else [task])
            for task in settings.task_names
        }
    )

    @asset(
        partitions_def=tasks,
        group_name="projection",
        deps=[AssetDep(embeddings, partition_mapping=mapping)],
        code_version=fingerprint({"projection": 2, "umap": settings.umap.model_dump()}),
        metadata=table_metadata("umap_coordinates"),
        pool="duckdb",
        backfill_policy=BackfillPolicy.single_run(),
        kinds={"duckdb", "umap"},
        check_specs=[
            AssetCheckSpec(
                "finite_point_for_every_document",
                asset="umap_coordinates",
                blocking=True,
                description="One finite 2-D point per sample document.",
            )
        ],
        description=f"2-D UMAP of each task's vectors (x, y) and the same layout rotated, scaled "
        f"and shifted onto the {reference!r} task's layout (x_aligned, y_aligned).",
    )
    def umap_coordinates(
        context: AssetExecutionContext, warehouse: Warehouse
    ) -> Iterator[MaterializeResult]:
        layouts: dict[str, tuple[list[str], np.ndarray, float]] = {}

        def layout_of(task: str) -> tuple[list[str], np.ndarray, float]:
            """Each task is read and projected once per run, however often it is needed."""
            if task not in layouts:
                started = time.monotonic()
                doc_ids, vectors = load_embeddings(warehouse, task)
                layouts[task] = (
                    doc_ids,
                    umap_layout(vectors, settings.umap),
                    time.monotonic() - started,
                )
            return layouts[task]

        problems: dict[str, list[str]] = {}
        frames: dict[str, pd.DataFrame] = {}
        for task in sorted(context.partition_keys, key=lambda name: name != reference):
            doc_ids, layout, seconds = layout_of(task)
            _, reference_layout, _ = layout_of(reference)
            alignment = align(layout, reference_layout)
            frame = pd.DataFrame(
                {
                    "task": task,
                    "doc_id": doc_ids,
                    "x": layout[:, 0],
                    "y": layout[:, 1],
                    "x_aligned": alignment.coordinates[:, 0],
                    "y_aligned": alignment.coordinates[:, 1],
                }
            )
            frames[task] = frame
            problems[task] = coordinate_problems(np.c_[layout, alignment.coordinates], len(doc_ids))
            context.add_asset_metadata(
                {
                    "table": "umap_coordinates",
                    "dagster/row_count": len(frame),
                    "aligned_to": reference,
                    "procrustes_disparity": round(alignment.disparity, 4),
                    "umap_seconds": round(seconds, 2),
                    **{f"umap_{key}": value for key, value in settings.umap.model_dump().items()},
                    **failed_check_metadata(problems[task]),
                },
                partition_key=task,
            )
        # Every partition of the run in one transaction: the table never runs ahead of Dagster.
        warehouse.replace_partitions(
            "umap_coordinates", COORDINATE_COLUMNS, frames, settings.task_names
        )
        yield MaterializeResult(
            check_results=[check_result("finite_point_for_every_document", problems)]
        )

    return [umap_coordinates]
