"""task_embeddings -> umap_coordinates, one partition per map, aligned onto the reference map."""

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
    asset,
)

from qwen_assets.defs.metadata import (
    PARTITION_VERSION_METADATA,
    check_result,
    failed_check_metadata,
    rows_version,
    run_data_version,
)
from qwen_assets.defs.partitions import MapGrid
from qwen_assets.defs.resources import Warehouse
from qwen_assets.defs.tables import table_metadata
from qwen_assets.pipeline.checks import coordinate_problems
from qwen_assets.pipeline.pause import pause_point
from qwen_assets.pipeline.projection import align, umap_layout
from qwen_assets.settings import Settings, fingerprint

COORDINATE_COLUMNS = {
    "variant": "VARCHAR",
    "task": "VARCHAR",
    "doc_id": "VARCHAR",
    "x": "DOUBLE",
    "y": "DOUBLE",
    "x_aligned": "DOUBLE",
    "y_aligned": "DOUBLE",
}


def load_embeddings(warehouse: Warehouse, grid: MapGrid, key: str) -> tuple[list[str], np.ndarray]:
    """One map's vectors in sample order (a clear error when the partition is not built)."""
    frame = warehouse.read_partition("task_embeddings", grid, key, "t.embedding")
    return frame["doc_id"].tolist(), np.stack(frame["embedding"].to_numpy()).astype(np.float32)


def projection_assets(
    settings: Settings, grid: MapGrid, embeddings: AssetsDefinition
) -> list[AssetsDefinition]:
    reference = grid.key(*grid.reference)

    @asset(
        partitions_def=grid.partitions_def,
        group_name="projection",
        deps=[AssetDep(embeddings, partition_mapping=grid.projection_mapping())],
        code_version=fingerprint({"projection": 3, "umap": settings.umap.model_dump()}),
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
        description=f"2-D UMAP of each map's vectors (x, y) and the same layout rotated, scaled "
        f"and shifted onto the {grid.label(reference)!r} map's layout (x_aligned, y_aligned).",
    )
    def umap_coordinates(
        context: AssetExecutionContext, warehouse: Warehouse
    ) -> Iterator[MaterializeResult]:
        pause_point("asset:umap_coordinates")
        layouts: dict[str, tuple[list[str], np.ndarray, float]] = {}

        def layout_of(key: str) -> tuple[list[str], np.ndarray, float]:
            """Each map is read and projected once per run, however often it is needed."""
            if key not in layouts:
                started = time.monotonic()
                doc_ids, vectors = load_embeddings(warehouse, grid, key)
                layouts[key] = (
                    doc_ids,
                    umap_layout(vectors, settings.umap),
                    time.monotonic() - started,
                )
            return layouts[key]

        problems: dict[str, list[str]] = {}
        frames: dict[str, pd.DataFrame] = {}
        versions: dict[str, str] = {}
        for key in sorted(context.partition_keys, key=lambda name: name != reference):
            variant, task = grid.split(key)
            doc_ids, layout, seconds = layout_of(key)
            _, reference_layout, _ = layout_of(reference)
            alignment = align(layout, reference_layout)
            frame = pd.DataFrame(
                {
                    "variant": variant,
                    "task": task,
                    "doc_id": doc_ids,
                    "x": layout[:, 0],
                    "y": layout[:, 1],
                    "x_aligned": alignment.coordinates[:, 0],
                    "y_aligned": alignment.coordinates[:, 1],
                }
            )
            frames[grid.label(key)] = frame
            points = np.c_[layout, alignment.coordinates]
            problems[key] = coordinate_problems(points, len(doc_ids))
            versions[key] = rows_version(doc_ids, points)
            context.add_asset_metadata(
                {
                    "table": "umap_coordinates",
                    "dagster/row_count": len(frame),
                    "aligned_to": grid.label(reference),
                    "procrustes_disparity": round(alignment.disparity, 4),
                    "umap_seconds": round(seconds, 2),
                    **{f"umap_{name}": value for name, value in settings.umap.model_dump().items()},
                    PARTITION_VERSION_METADATA: versions[key],
                    **failed_check_metadata(problems[key]),
                },
                partition_key=key,
            )
        # Every partition of the run in one transaction: the table never runs ahead of Dagster.
        warehouse.replace_partitions("umap_coordinates", COORDINATE_COLUMNS, frames, grid)
        yield MaterializeResult(
            check_results=[check_result("finite_point_for_every_document", problems)],
            data_version=run_data_version(versions),
        )

    return [umap_coordinates]
