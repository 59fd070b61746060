"""task_embeddings -> umap_coordinates, one partition per map, aligned onto the reference map.

A map keeps its layout as the sample grows: new posts are placed onto it (see
``pipeline.projection.grown_layout``), so each build reads what the last one stored.
"""

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetKey,
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
from qwen_assets.pipeline.projection import (
    GrownLayout,
    StoredLayout,
    aligned_coordinates,
    grown_layout,
    placement_times,
)
from qwen_assets.settings import Settings, fingerprint

PROJECTION_VERSION = 4
# A run tag: the maps (partition keys, comma-separated) to project anew even where their
# layout could be kept (`qwen-assets build --force umap_coordinates[...]` sets it).
REPROJECT_TAG = "qwen_assets/reproject"
COORDINATES = AssetKey("umap_coordinates")

COORDINATE_COLUMNS = {
    "variant": "VARCHAR",
    "task": "VARCHAR",
    "doc_id": "VARCHAR",
    "x": "DOUBLE",
    "y": "DOUBLE",
    "x_aligned": "DOUBLE",
    "y_aligned": "DOUBLE",
    "placed_at": "TIMESTAMP",
    "layout": "VARCHAR",
    "aligned_onto": "VARCHAR",
}


def load_embeddings(warehouse: Warehouse, grid: MapGrid, key: str) -> tuple[list[str], np.ndarray]:
    """One map's vectors in sample order (a clear error when the partition is not built)."""
    frame = warehouse.read_partition("task_embeddings", grid, key, "t.embedding")
    return frame["doc_id"].tolist(), np.stack(frame["embedding"].to_numpy()).astype(np.float32)


def stored_layout(warehouse: Warehouse, grid: MapGrid, key: str) -> StoredLayout | None:
    """A map's stored layout, if it can be built on: one layout, a finite point per post
    (a damaged one is projected anew, never kept)."""
    rows = warehouse.stored_rows("umap_coordinates", grid, key, list(COORDINATE_COLUMNS)[2:])
    if rows is None or rows.empty or rows[["layout", "aligned_onto"]].nunique().max() != 1:
        return None
    points = rows[["x", "y", "x_aligned", "y_aligned"]].to_numpy(dtype=np.float64)
    if not np.isfinite(points).all() or rows["doc_id"].duplicated().any():
        return None
    return StoredLayout(
        doc_ids=rows["doc_id"].tolist(),
        coordinates=rows[["x", "y"]].to_numpy(dtype=np.float64),
        aligned=rows[["x_aligned", "y_aligned"]].to_numpy(dtype=np.float64),
        placed_at=[None if pd.isna(when) else when for when in rows["placed_at"]],
        layout=str(rows["layout"].iloc[0]),
        aligned_onto=str(rows["aligned_onto"].iloc[0]),
    )


def projection_assets(
    settings: Settings, grid: MapGrid, embeddings: AssetsDefinition
) -> list[AssetsDefinition]:
    reference = grid.key(*grid.reference)

    def layout_basis(key: str) -> str:
        """What a map's layout is projected from: the projection code, the UMAP settings
        and the map's prompt (so its vectors). A stored layout of another basis is redone."""
        return fingerprint(
            [PROJECTION_VERSION, settings.umap.layout_fingerprint(), grid.prompt_version(key)]
        )

    @asset(
        partitions_def=grid.partitions_def,
        group_name="projection",
        deps=[AssetDep(embeddings, partition_mapping=grid.projection_mapping())],
        code_version=fingerprint(
            {"projection": PROJECTION_VERSION, "umap": settings.umap.model_dump()}
        ),
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
        f"and shifted onto the {grid.label(reference)!r} map's layout (x_aligned, y_aligned). "
        "Posts new to a map are placed onto its layout (placed_at) while they are at most "
        "umap.place_new_up_to of it; the others keep their place.",
    )
    def umap_coordinates(
        context: AssetExecutionContext, warehouse: Warehouse
    ) -> Iterator[MaterializeResult]:
        pause_point("asset:umap_coordinates")
        now = datetime.now(UTC).replace(tzinfo=None)
        asked = set(filter(None, context.run.tags.get(REPROJECT_TAG, "").split(",")))
        grown: dict[str, tuple[list[str], GrownLayout, StoredLayout | None, float]] = {}

        def layout_of(key: str) -> tuple[list[str], GrownLayout, StoredLayout | None, float]:
            """Each map is read and laid out once per run, however often it is needed."""
            if key not in grown:
                started = time.monotonic()
                doc_ids, vectors = load_embeddings(warehouse, grid, key)
                stored = stored_layout(warehouse, grid, key)
                layout = grown_layout(
                    doc_ids,
                    vectors,
                    stored,
                    layout_basis(key),
                    settings.umap,
                    reproject=key in asked,
                )
                grown[key] = (doc_ids, layout, stored, time.monotonic() - started)
            return grown[key]

        problems: dict[str, list[str]] = {}
        frames: dict[str, pd.DataFrame] = {}
        versions: dict[str, str] = {}
        for key in sorted(context.partition_keys, key=lambda name: name != reference):
            variant, task = grid.split(key)
            doc_ids, layout, stored, seconds = layout_of(key)
            _, reference_layout, _, _ = layout_of(reference)
            aligned, disparity = aligned_coordinates(doc_ids, layout, stored, reference_layout)
            placed_at = placement_times(doc_ids, layout, stored, now)
            frame = pd.DataFrame(
                {
                    "variant": variant,
                    "task": task,
                    "doc_id": doc_ids,
                    "x": layout.coordinates[:, 0],
                    "y": layout.coordinates[:, 1],
                    "x_aligned": aligned[:, 0],
                    "y_aligned": aligned[:, 1],
                    "placed_at": pd.Series(placed_at, dtype="datetime64[us]"),
                    "layout": layout.layout,
                    "aligned_onto": reference_layout.layout,
                }
            )
            frames[grid.label(key)] = frame
            points = np.c_[layout.coordinates, aligned]
            problems[key] = coordinate_problems(points, len(doc_ids))
            versions[key] = rows_version(doc_ids, points)
            context.log.info("%s: %s", grid.label(key), layout.why)
            context.add_asset_metadata(
                {
                    "table": "umap_coordinates",
                    "dagster/row_count": len(frame),
                    "aligned_to": grid.label(reference),
                    "procrustes_disparity": round(disparity, 4),
                    "layout": layout.why,
                    "placed_now": int(layout.placed.sum()),
                    "placed_before": int(frame["placed_at"].notna().sum() - layout.placed.sum()),
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
