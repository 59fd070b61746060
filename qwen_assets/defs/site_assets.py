"""umap_coordinates + task_embeddings -> site_data -> site_pages."""

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    AssetSpec,
    MaterializeResult,
    MetadataValue,
    asset,
    multi_asset,
)

from qwen_assets.defs.metadata import counts_markdown
from qwen_assets.defs.partitions import MapGrid
from qwen_assets.defs.projection_assets import load_embeddings
from qwen_assets.defs.resources import Warehouse
from qwen_assets.defs.run_worker import RECORDS_ITS_WORKER
from qwen_assets.defs.tables import COLUMNS, table_metadata
from qwen_assets.pipeline.controls import Effect
from qwen_assets.pipeline.corpus import EXTRAS
from qwen_assets.pipeline.integrity import SITE_TABLES
from qwen_assets.pipeline.pause import pause_point
from qwen_assets.pipeline.publish import publish_site, redact_credentials
from qwen_assets.pipeline.site import (
    TaskMap,
    read_payload,
    sources_dir,
    sources_fingerprint,
    stage_payload,
    task_page_name,
    write_pages,
)
from qwen_assets.pipeline.site_build import (
    CLUSTER_SCHEMA,
    cluster_rows,
    effect_rows,
    quality_rows,
    site_contents,
)
from qwen_assets.settings import PROPERTIES, SCORE_PROPERTIES, Settings, fingerprint

INSTRUCTION_CHECK = "instruction_beyond_its_controls"

SITE_BUILD_COLUMNS = {
    "built_at": "TIMESTAMP",
    "payload_sha256": "VARCHAR",
    "payload_bytes": "BIGINT",
    "documents": "INTEGER",
    "tasks": "VARCHAR[]",
    "variants": "VARCHAR[]",
    "task_versions": "MAP(VARCHAR, VARCHAR)",
    "settings_fingerprint": "VARCHAR",
    "output_dir": "VARCHAR",
}


def quality_markdown(quality: dict[str, dict]) -> str:
    """One row per map (``task`` or ``variant/task``)."""
    first = next(iter(quality.values()), {})
    names = ["knn_accuracy", "silhouette", "trustworthiness", "overlap_with_reference"]
    names += [name for name in ("overlap_with_reference_variant",) if name in first]
    names += [f"predicts_{name}" for name in PROPERTIES if f"predicts_{name}" in first]
    names += ["probe_accuracy", "v_measure", "cka_with_reference"]
    lines = ["| map | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for task, figures in quality.items():
        shown = ("n/a" if figures.get(name) is None else f"{figures[name]:.3f}" for name in names)
        lines.append(f"| {task} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def effects_markdown(effects: Sequence[Effect]) -> str:
    """Each task's target figure, the instruction's against its wordings' and controls'."""
    lines = [
        "| task | figure | instruction | paraphrases (min-max) | shuffled | generic |",
        "|---|---|---|---|---|---|",
    ]
    for effect in effects:
        if effect.is_target:
            lines.append(
                f"| {effect.variant}/{effect.task} | {effect.figure} | "
                f"{_shown(effect.instruction)} | {_shown(effect.paraphrase_min)}-"
                f"{_shown(effect.paraphrase_max)} | {_shown(effect.shuffled)} | "
                f"{_shown(effect.generic)} |"
            )
    return "\n".join(lines) if len(lines) > 2 else "no task has a target and controls"


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def instruction_check(effects: Sequence[Effect], grid: MapGrid) -> AssetCheckResult:
    """A warning, not a block: a task whose instruction moves its target no more than one of
    its controls does (the figures are still published, to be read)."""
    warnings = {
        grid.label(grid.key(effect.variant, effect.task)): line
        for effect in effects
        if effect.is_target and (line := effect.warning(effect.figure.removeprefix("predicts_")))
    }
    checked = sorted({effect.task for effect in effects if effect.is_target})
    return AssetCheckResult(
        asset_key="instruction_effects",
        check_name=INSTRUCTION_CHECK,
        passed=not warnings,
        severity=AssetCheckSeverity.WARN,
        description="; ".join(warnings.values()) or None,
        metadata=warnings or {"tasks": ", ".join(checked) or "none has a target and controls"},
    )


def clusters_markdown(clusters: pd.DataFrame) -> str:
    lines = ["| variant | task | posts | label |", "|---|---|---|---|"]
    ordered = clusters.sort_values(["variant", "task", "size"], ascending=[True, True, False])
    for row in ordered.itertuples():
        lines.append(f"| {row.variant} | {row.task} | {row.size} | {row.label} |")
    return "\n".join(lines)


def site_assets(
    settings: Settings,
    grid: MapGrid,
    sample: AssetsDefinition,
    embeddings: AssetsDefinition,
    coordinates: AssetsDefinition,
    properties: AssetsDefinition,
) -> list[AssetsDefinition]:
    site = settings.site
    output_dir = Path(site.output_dir)

    payload_version = fingerprint(
        {
            "site_data": 9,  # the payload, its files and its tables, as this code writes them
            # The tables' columns too: one added makes a table built before it stale, instead
            # of a query for that column failing on a build called fresh.
            "tables": {table: COLUMNS[table] for table in SITE_TABLES},
            # Not where the site is written: a site moved or deleted is found by the build's
            # check of its outputs, and a copied project stays fresh.
            "site": site.model_dump(exclude={"output_dir"}),
            "variants": {name: v.description for name, v in settings.variants.items()},
            # descriptions and targets shape the payload and the figures, not the vectors
            "tasks": {name: task.model_dump() for name, task in settings.tasks.items()},
            # which paraphrases and controls there are to compare each task with
            "prompts": settings.prompt_names,
        }
    )
    # The sample too: the payload carries its texts, previews and extra columns, which can
    # change while every vector and property stays as it was.
    inputs = [sample, embeddings, coordinates, properties]

    @multi_asset(
        group_name="site",
        pool="duckdb",
        check_specs=[
            AssetCheckSpec(
                INSTRUCTION_CHECK,
                asset="instruction_effects",
                blocking=False,
                description="Warns when a task's instruction moves the property it aims at no "
                "more than its own words shuffled, or a generic instruction as long, do "
                "([controls] on, tasks with a target).",
            )
        ],
        specs=[
            AssetSpec(
                "site_data",
                deps=inputs,
                code_version=payload_version,
                kinds={"json"},
                description=f"The site's payload, {output_dir}/data.json (and data.js for pages "
                "opened from disk): texts once, aligned coordinates, top-k neighbours and quality "
                "figures per task.",
            ),
            AssetSpec(
                "task_quality",
                metadata=table_metadata("task_quality"),
                deps=inputs,
                code_version=payload_version,
                kinds={"duckdb"},
                description="Table task_quality: the quality figures of each task's space and "
                "map (k-NN accuracy, silhouette, trustworthiness, overlap with the reference, a "
                "linear probe, V-measure, CKA with the reference).",
            ),
            AssetSpec(
                "instruction_effects",
                metadata=table_metadata("instruction_effects"),
                deps=inputs,
                code_version=payload_version,
                kinds={"duckdb"},
                description="Table instruction_effects: is it the instruction? Each figure of "
                "each task with paraphrases or controls ([controls]): the instruction's value, "
                "its spread over the paraphrases, and the values of its shuffled words and of "
                "a generic instruction as long.",
            ),
            AssetSpec(
                "map_clusters",
                metadata=table_metadata("map_clusters"),
                deps=inputs,
                code_version=payload_version,
                kinds={"duckdb"},
                description="Table map_clusters: the dense clusters of each task's map, each "
                "labelled by its most distinctive words (c-TF-IDF), with its label's place and "
                "its posts (doc_ids). The labels the site draws.",
            ),
            AssetSpec(
                "site_builds",
                metadata=table_metadata("site_builds"),
                deps=["site_data"],
                code_version=payload_version,
                kinds={"duckdb"},
                description="Table site_builds: one row per build of the payload (hash, size, "
                "tasks and the prompt version of each).",
            ),
        ],
    )
    def site_data(context: AssetExecutionContext, warehouse: Warehouse):
        pause_point("asset:site_data")
        started = time.monotonic()
        extras = f", {EXTRAS}" if settings.corpus.extra_columns else ""
        documents = warehouse.query(
            f"SELECT doc_id, category, text, preview{extras} FROM newsgroups_sample "
            "ORDER BY position"
        )
        scores = warehouse.query(
            f"""SELECT {", ".join(SCORE_PROPERTIES)} FROM document_properties
                JOIN newsgroups_sample USING (doc_id) ORDER BY position"""
        )
        per_document = {name: scores[name].to_numpy() for name in SCORE_PROPERTIES}

        def read_map(variant: str, task: str) -> tuple[np.ndarray, np.ndarray, list[object]]:
            key = grid.key(variant, task)
            layout = warehouse.read_partition(
                "umap_coordinates", grid, key, "t.x_aligned, t.y_aligned, t.placed_at"
            )
            vectors = load_embeddings(warehouse, grid, key)[1]
            aligned = layout[["x_aligned", "y_aligned"]].to_numpy()
            return vectors, aligned, layout["placed_at"].tolist()

        contents = site_contents(settings, documents, per_document, read_map)
        maps = contents.maps
        texts = documents["text"].tolist()
        staged, written = stage_payload(contents.payload, output_dir, texts)

        def label(m: TaskMap) -> str:
            return grid.label(grid.key(m.variant, m.name))

        quality = {label(m): dict(m.quality) for m in maps}
        headlines = {label(m): m.headline for m in maps if m.headline is not None}
        clusters = cluster_rows(maps, documents["doc_id"].tolist())
        build_row = {
            "built_at": datetime.now(UTC).replace(tzinfo=None),
            "payload_sha256": written.sha256,
            "payload_bytes": written.bytes,
            "documents": len(documents),
            "tasks": settings.task_names,
            "variants": settings.variant_names,
            "task_versions": {grid.label(key): grid.prompt_version(key) for key in grid.keys},
            "settings_fingerprint": fingerprint(settings.model_dump(mode="json")),
            "output_dir": str(output_dir.resolve()),
        }
        try:
            pause_point("site_data:staged")
            # The tables in one transaction, then the files: a step that fails or is killed
            # before the swap leaves the old files and is not recorded, so the next build
            # redoes it; the files never show a state that the tables do not hold.
            warehouse.write_tables(
                replace={
                    "task_quality": quality_rows(maps),
                    "instruction_effects": effect_rows(contents.effects),
                    "map_clusters": pa.Table.from_pandas(
                        clusters, schema=CLUSTER_SCHEMA, preserve_index=False
                    ),
                },
                append={"site_builds": (SITE_BUILD_COLUMNS, pd.DataFrame([build_row]))},
            )
            pause_point("site_data:committed")
        except BaseException:
            staged.discard()
            raise
        staged.swap()
        yield MaterializeResult(
            asset_key="site_data",
            metadata={
                "path": MetadataValue.path(str(written.json_path.resolve())),
                "payload_bytes": written.bytes,
                "bytes_per_1000_documents": round(written.bytes * 1000 / len(documents)),
                "payload_sha256": written.sha256,
                "documents": len(documents),
                "tasks": ", ".join(settings.task_names),
                **({"variants": ", ".join(settings.variant_names)} if grid.gridded else {}),
                "categories": counts_markdown(documents["category"].value_counts(), "category"),
                "quality": MetadataValue.md(quality_markdown(quality)),
                **{  # the tasks' own figures (their paraphrases' and controls': the table)
                    f"{label(m)}/{name}": value
                    for m in maps
                    if m.picked
                    for name, value in m.quality.items()
                    if name != "documents_scored" and value is not None
                },
                "seconds": round(time.monotonic() - started, 2),
            },
        )
        yield MaterializeResult(
            asset_key="task_quality",
            metadata={
                "table": "task_quality",
                "dagster/row_count": len(quality),
                "quality": MetadataValue.md(quality_markdown(quality)),
                **{f"{label}/headline": line.sentence() for label, line in headlines.items()},
            },
        )
        yield MaterializeResult(
            asset_key="instruction_effects",
            metadata={
                "table": "instruction_effects",
                "dagster/row_count": len(contents.effects),
                "effects": MetadataValue.md(effects_markdown(contents.effects)),
            },
            check_results=[instruction_check(contents.effects, grid)],
        )
        yield MaterializeResult(
            asset_key="map_clusters",
            metadata={
                "table": "map_clusters",
                "dagster/row_count": len(clusters),
                "labels": MetadataValue.md(clusters_markdown(clusters)),
            },
        )
        yield MaterializeResult(
            asset_key="site_builds",
            metadata={"table": "site_builds", "payload_sha256": written.sha256},
        )

    @asset(
        group_name="site",
        deps=["site_data"],
        required_resource_keys=RECORDS_ITS_WORKER,
        code_version=fingerprint(
            {
                "site_pages": 1,
                "sources": sources_fingerprint(sources_dir()),
                "tasks": settings.task_names,
            }
        ),
        kinds={"html"},
        description=f"The static site in {output_dir}/: the explorer (index.html), a side-by-side "
        "comparison and one page per task, with plotly.js (its basic bundle, or for a site "
        "drawn with WebGL the plotly package's full one). "
        "Works from disk and from any static host.",
    )
    def site_pages() -> MaterializeResult:
        pause_point("asset:site_pages")
        payload = read_payload(output_dir)
        webgl = len(payload["documents"]["id"]) > payload["render"]["webgl_above"]
        written = write_pages(output_dir, settings.task_names, webgl=webgl)
        index = output_dir / "index.html"
        return MaterializeResult(
            metadata={
                "index": MetadataValue.url(index.resolve().as_uri()),
                "files": len(written),
                "task_pages": ", ".join(task_page_name(task) for task in settings.task_names),
                "plotly_bundle": "gl2d (WebGL)" if webgl else "basic (SVG)",
                "bytes": sum(path.stat().st_size for path in written),
            }
        )

    if not settings.publish.enabled:
        return [site_data, site_pages]

    publish = settings.publish
    where = publish.folder or (
        f"branch {publish.git_branch} of {redact_credentials(publish.git_repository or '')}"
    )

    @asset(
        group_name="site",
        deps=["site_pages"],
        required_resource_keys=RECORDS_ITS_WORKER,
        code_version=fingerprint({"published_site": 1, "publish": publish.model_dump()}),
        kinds={"git"} if publish.git_repository else {"folder"},
        description=f"The built site, published to {where} whenever the site changed.",
    )
    def published_site() -> MaterializeResult:
        pause_point("asset:published_site")
        published = publish_site(output_dir, publish)
        return MaterializeResult(
            metadata={
                "target": published.target,
                "changed": published.changed,
                "files": published.files,
                "site_sha256": published.fingerprint,
                **({"commit": published.commit} if published.commit else {}),
            }
        )

    return [site_data, site_pages, published_site]
