"""newsgroups_sample + task_embeddings + umap_coordinates -> the query views."""

from dagster import AssetsDefinition, AssetSpec, MaterializeResult, multi_asset

from qwen_assets.defs.resources import Warehouse
from qwen_assets.query import VIEWS
from qwen_assets.settings import fingerprint


def query_assets(
    sample: AssetsDefinition, embeddings: AssetsDefinition, coordinates: AssetsDefinition
) -> list[AssetsDefinition]:
    @multi_asset(
        group_name="query",
        pool="duckdb",
        specs=[
            AssetSpec(
                name,
                deps=[sample, embeddings, coordinates],
                code_version=fingerprint({"view": sql}),
                kinds={"duckdb"},
                description=f"View {name}: joins the sample, the vectors and the maps for "
                "queries (see the README's SQL).",
            )
            for name, sql in VIEWS.items()
        ],
    )
    def query_views(warehouse: Warehouse):
        warehouse.create_views()
        for name in VIEWS:
            yield MaterializeResult(asset_key=name, metadata={"view": name})

    return [query_views]
