"""The tables -> the query views -> query_database, the copy of everything people query."""

from collections.abc import Callable, Sequence

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    AssetSpec,
    DagsterInstance,
    MaterializeResult,
    MetadataValue,
    asset,
    multi_asset,
)

from qwen_assets.defs.resources import Warehouse
from qwen_assets.defs.tables import table_metadata
from qwen_assets.pipeline.pause import pause_point
from qwen_assets.pipeline.query import VIEWS
from qwen_assets.pipeline.storage import IncompleteStateError, shown
from qwen_assets.settings import Settings, fingerprint

QUERY_DATABASE = AssetKey("query_database")


def query_assets(
    settings: Settings,
    sample: AssetsDefinition,
    embeddings: AssetsDefinition,
    coordinates: AssetsDefinition,
    tables: Sequence[AssetKey],
    stale_upstream: Callable[[DagsterInstance], dict[str, str]],
) -> list[AssetsDefinition]:
    """``stale_upstream``: what is stale among query_database's inputs (label -> why), by the
    project's one stale rule, which lives above the definitions and is handed in."""

    @multi_asset(
        group_name="query",
        pool="duckdb",
        specs=[
            AssetSpec(
                name,
                deps=[sample, embeddings, coordinates],
                metadata=table_metadata(name),
                code_version=fingerprint({"view": sql}),
                kinds={"duckdb"},
                description=f"View {name}: joins the sample, the vectors and the maps for "
                "queries (see docs/querying.md).",
            )
            for name, sql in VIEWS.items()
        ],
    )
    def query_views(warehouse: Warehouse):
        pause_point("asset:query_views")
        warehouse.create_views()
        for name in VIEWS:
            yield MaterializeResult(asset_key=name, metadata={"view": name})

    @asset(
        key=QUERY_DATABASE,
        group_name="query",
        deps=[*tables, *VIEWS],
        code_version=fingerprint(
            {"query_database": 1, "readable_by": settings.storage.readable_by}
        ),
        pool="duckdb",
        kinds={"duckdb"},
        description=f"The database people query, {shown(settings.storage.database)}: every table and "
        "view of the builds' own database, copied whole once they form one complete state and "
        f"renamed into place (storage format of DuckDB {settings.storage.readable_by}). A "
        "reader holding it open never blocks a build, and keeps the state it opened.",
    )
    def query_database(context: AssetExecutionContext, warehouse: Warehouse) -> MaterializeResult:
        pause_point("asset:query_database")
        stale = stale_upstream(context.instance)
        if stale:
            first, why = next(iter(stale.items()))
            more = f" (and {len(stale) - 1} more)" if len(stale) > 1 else ""
            raise IncompleteStateError(
                f"{first} is not up to date ({why}){more}: the database people query keeps "
                "its last complete state; materialize what is stale first, or run "
                "`qwen-assets build`"
            )
        published = warehouse.copy_to_query_database()
        context.log.info(
            "published %s (%d tables) in %.1fs",
            published.target,
            len(published.tables),
            published.seconds,
        )
        rows = "\n".join(f"| {table} | {count:,} |" for table, count in published.tables.items())
        return MaterializeResult(
            metadata={
                "path": MetadataValue.path(published.target),
                "readable_by": f"DuckDB {settings.storage.readable_by} and later",
                "publish_seconds": round(published.seconds, 2),
                **({"bytes": published.bytes} if published.bytes is not None else {}),
                "tables": MetadataValue.md("| table | rows |\n|---|---|\n" + rows),
                "tasks": ", ".join(settings.task_names),
            }
        )

    return [query_views, query_database]
