"""The single entry point: ``defs``, built from the settings file, for ``dg`` and ``dagster dev``.

Partitions (one per task, or per variant x task: see ``defs/partitions.py``) and code
versions (from the sample and UMAP settings) are derived from the settings, so editing the
file and reloading the code location shows exactly what went stale. The project's own
definitions are made by the factories in ``qwen_assets.defs`` (they need the settings);
anything added there at module level (``dg scaffold defs``) is loaded beside them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from dagster import (
    BetaWarning,
    Definitions,
    in_process_executor,
    load_from_defs_folder,
)

from qwen_assets.defs.corpus_assets import corpus_assets
from qwen_assets.defs.embedding_assets import embedding_assets
from qwen_assets.defs.jobs import assets_job
from qwen_assets.defs.partitions import MapGrid
from qwen_assets.defs.projection_assets import projection_assets
from qwen_assets.defs.query_assets import QUERY_DATABASE, query_assets
from qwen_assets.defs.resources import Embedder, Warehouse
from qwen_assets.defs.run_worker import RunWorker
from qwen_assets.defs.site_assets import site_assets
from qwen_assets.orchestration.automation import build_automation
from qwen_assets.orchestration.sources import source_versions
from qwen_assets.orchestration.stale import stale_inputs
from qwen_assets.pipeline.embedding import resolve_backend
from qwen_assets.settings import Settings, load_settings

# The site's assets that are tables people query (site_data and site_pages are files).
TABLES = {"task_quality", "instruction_effects", "map_clusters", "site_builds"}
# Where dg keeps a project's configuration; absent when the package is installed as a wheel,
# where nothing is scaffolded.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def build_definitions(settings: Settings) -> Definitions:
    grid = MapGrid(settings)
    # The stale rule and the triggers read the whole Definitions: handed to them once made.
    made: list[Definitions] = []
    with warnings.catch_warnings():
        # Partitioned observable sources and single-run backfills are beta in Dagster 1.13;
        # this project relies on both on purpose (see docs/rebuilds.md), so say it once,
        # there. And Dagster's own observable_source_asset reads a property it deprecated
        # (OpDefinition.version): nothing this project can change. Every other warning shows.
        for beta in ("observable_source_asset", "backfill_policy"):
            warnings.filterwarnings("ignore", f".*`{beta}`.*beta", BetaWarning)
        warnings.filterwarnings(
            "ignore", "Property `OpDefinition.version` is deprecated", DeprecationWarning
        )
        *corpus_file, raw_newsgroups, newsgroups_sample, document_properties = corpus_assets(
            settings
        )
        task_instructions, task_embeddings = embedding_assets(settings, grid, newsgroups_sample)
        (umap_coordinates,) = projection_assets(settings, grid, task_embeddings)
        # site_data, site_pages, and published_site when publishing is set
        site = site_assets(
            settings,
            grid,
            newsgroups_sample,
            task_embeddings,
            umap_coordinates,
            document_properties,
        )
        tables = [
            raw_newsgroups.key,
            newsgroups_sample.key,
            document_properties.key,
            task_embeddings.key,
            umap_coordinates.key,
            *(key for assets_def in site for key in assets_def.keys if key.path[0] in TABLES),
        ]
        query_views, query_database = query_assets(
            settings,
            newsgroups_sample,
            task_embeddings,
            umap_coordinates,
            tables,
            lambda instance: stale_inputs(
                made[0], instance, QUERY_DATABASE, source_versions(settings)
            ),
        )
    assets = [
        *corpus_file,
        raw_newsgroups,
        newsgroups_sample,
        document_properties,
        task_instructions,
        task_embeddings,
        umap_coordinates,
        *site,
        query_views,
        query_database,
    ]

    chosen = {
        variant: resolve_backend(settings.embedding_of(variant))
        for variant in settings.variant_names
    }
    embedder = Embedder(
        backends={variant: backend for variant, (backend, _) in chosen.items()},
        backend_reasons={variant: reason for variant, (_, reason) in chosen.items()},
        cache_database=settings.storage.embedding_cache,
    )
    job = assets_job()
    rebuild, observe, schedule, rebuild_job, continuation = build_automation(
        settings, lambda: made[0], job
    )
    run_worker = RunWorker()
    defs = Definitions(
        assets=assets,
        jobs=[job, rebuild_job],
        schedules=[schedule],
        sensors=[rebuild, observe, continuation],
        resources={
            "warehouse": Warehouse(
                database=settings.storage.build_database,
                published=settings.storage.database,
                readable_by=settings.storage.readable_by,
                lock_wait_seconds=settings.storage.lock_wait_seconds,
                worker=run_worker,
            ),
            "embedder": embedder,
            "run_worker": run_worker,
        },
        executor=in_process_executor,
    )
    made.append(defs)
    return defs


def scaffolded_definitions() -> Definitions:
    """What ``dg scaffold defs`` added to ``qwen_assets/defs/`` (the project's own modules
    there define factories, not definitions, so they add nothing)."""
    if not (PROJECT_ROOT / "pyproject.toml").is_file():
        return Definitions()
    return load_from_defs_folder(path_within_project=PROJECT_ROOT)


defs = Definitions.merge(build_definitions(load_settings()), scaffolded_definitions())
