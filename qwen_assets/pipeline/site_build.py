"""What one build of the site computes from the stored sample, vectors and maps: every
map's share of the payload, the payload itself, and the tables written beside it (a row per
map, ``task_quality``; a row per labelled cluster, ``map_clusters``; a row per figure of each
task with controls, ``instruction_effects``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import pyarrow as pa

from qwen_assets.pipeline.controls import Effect, PromptFigures, instruction_effects
from qwen_assets.pipeline.corpus import EXTRAS
from qwen_assets.pipeline.site import (
    UNCLUSTERED,
    TaskMap,
    build_payload,
    compared_with_reference_variant,
    task_maps,
)
from qwen_assets.settings import Settings

CLUSTER_SCHEMA = pa.schema(
    [
        ("variant", pa.string()),
        ("task", pa.string()),
        ("cluster", pa.int32()),
        ("label", pa.string()),
        ("words", pa.list_(pa.string())),
        ("size", pa.int32()),
        ("x", pa.float64()),
        ("y", pa.float64()),
        ("doc_ids", pa.list_(pa.string())),
    ]
)


def quality_rows(maps: list[TaskMap]) -> pd.DataFrame:
    """Table task_quality: one row per map, its figures and its headline."""
    return pd.DataFrame(
        [
            {
                "variant": m.variant,
                "task": m.name,
                "role": m.role,
                "of_task": m.of_task,
                **m.quality,
                "target": m.target,
                "predicts_target": m.quality.get(f"predicts_{m.target}"),
                "headline": m.headline.sentence() if m.headline else None,
            }
            for m in maps
        ]
    )


EFFECT_SCHEMA = pa.schema(
    [
        ("variant", pa.string()),
        ("task", pa.string()),
        ("figure", pa.string()),
        ("is_target", pa.bool_()),
        *[(name, pa.float64()) for name in ("instruction", "paraphrase_min", "paraphrase_max")],
        ("paraphrases", pa.int64()),
        *[
            (name, pa.float64())
            for name in ("shuffled", "generic", "beyond_shuffled", "beyond_generic")
        ],
        ("strongest_control", pa.string()),
        ("within_controls", pa.bool_()),
    ]
)


def effect_rows(effects: Sequence[Effect]) -> pa.Table:
    """Table instruction_effects: one row per figure of each task with controls."""
    return pa.Table.from_pylist([effect.row() for effect in effects], schema=EFFECT_SCHEMA)


def cluster_rows(maps: list[TaskMap], doc_ids: list[str]) -> pd.DataFrame:
    """One row per labelled cluster of each task's map, with the posts in it."""
    rows = [
        {
            "variant": task_map.variant,
            "task": task_map.name,
            "cluster": cluster.number,
            "label": cluster.label,
            "words": list(cluster.words),
            "size": cluster.size,
            "x": cluster.x,
            "y": cluster.y,
            "doc_ids": [
                doc_ids[i] for i in np.flatnonzero(task_map.clusters.membership == cluster.number)
            ],
        }
        for task_map in maps
        if task_map.clusters is not None
        for cluster in task_map.clusters.clusters
    ]
    return pd.DataFrame(rows, columns=CLUSTER_SCHEMA.names)


def variant_rows(settings: Settings) -> list[dict[str, object]]:
    """What each variant changes, for the payload: its name and how it embeds."""
    return [
        {
            "name": variant,
            "description": settings.variants[variant].description if settings.variants else "",
            "model": embedding.model,
            "prompt_template": embedding.prompt_template,
            "dimensions": embedding.dimensions,
        }
        for variant in settings.variant_names
        for embedding in [settings.embedding_of(variant)]
    ]


# (variant, task) -> that map's vectors (rows in sample order), its aligned layout and when
# each post was placed onto it (None: laid out with the map)
ReadMap = Callable[[str, str], tuple[np.ndarray, np.ndarray, Sequence[object]]]


@dataclass(frozen=True)
class SiteContents:
    payload: dict
    maps: list[TaskMap]  # every prompt's, the tasks' and their paraphrases' and controls'
    effects: list[Effect]


def site_contents(
    settings: Settings,
    documents: pd.DataFrame,
    scores: Mapping[str, np.ndarray],
    read_map: ReadMap,
) -> SiteContents:
    """The payload, every map of it, and each task's figures beside its paraphrases' and
    controls', variant by variant. ``documents``: the sample in order (doc_id, category,
    text, preview); ``scores``: per-document values by property. A corpus without labels
    (category null) is coloured by the clusters of the reference map, and the figures about
    categories are None."""
    labelled = bool(documents["category"].notna().all())
    categories = documents["category"].tolist() if labelled else None
    texts = documents["text"].tolist()
    targets = {name: task.target for name, task in settings.tasks.items()}
    maps: list[TaskMap] = []
    effects: list[Effect] = []
    for variant in settings.variant_names:
        read = {name: read_map(variant, name) for name in settings.prompt_names}
        found = [
            replace(found, placed=placement_dates(read[found.name][2]))
            for found in task_maps(
                settings,
                categories,
                vectors={name: vectors for name, (vectors, _, _) in read.items()},
                layouts={name: layout for name, (_, layout, _) in read.items()},
                scores=scores,
                texts=texts,
                variant=variant,
            )
        ]
        effects += instruction_effects(
            variant, [PromptFigures(m.of_task, m.role, m.quality) for m in found], targets
        )
        maps += found
    maps = compared_with_reference_variant(maps, settings.reference_variant)
    site = settings.site
    reference = next(
        m
        for m in maps
        if m.variant == settings.reference_variant and m.name == settings.umap.align_to
    )
    payload = build_payload(
        doc_ids=documents["doc_id"].tolist(),
        categories=categories or cluster_names(reference),
        texts=texts,
        previews=documents["preview"].tolist(),
        tasks=[m for m in maps if m.picked],
        variants=variant_rows(settings),
        reference_task=settings.umap.align_to,
        coordinate_decimals=site.coordinate_decimals,
        webgl_above=site.webgl_above,
        preview_chars=settings.corpus.preview_chars,
        inline_texts=len(documents) <= site.inline_texts_up_to,
        properties=scores,
        categories_from=None if labelled else map_title(reference, settings),
        controls=controls_of(settings, effects),
        extras=extra_values(documents, settings.corpus.extra_columns),
    )
    return SiteContents(payload, maps, effects)


def extra_values(documents: pd.DataFrame, columns: Sequence[str]) -> dict[str, list[str | None]]:
    """The sample's extra columns (``corpus.extra_columns``, stored as a JSON object a post),
    by column: a value a post, None where its row had none."""
    if EXTRAS not in documents or not columns:
        return {}
    rows = [json.loads(held) for held in documents[EXTRAS]]
    return {column: [row.get(column) for row in rows] for column in columns}


def controls_of(settings: Settings, effects: Sequence[Effect]) -> dict[str, dict]:
    """For the payload, by ``variant/task``: the prompts beside each task's instruction and
    its figures beside theirs (a task without controls or paraphrases is absent)."""
    compared: dict[str, list[dict[str, str]]] = {}
    for prompt in settings.prompts.values():
        if prompt.role != "task":
            compared.setdefault(prompt.task, []).append(
                {"role": prompt.role, "instruction": prompt.instruction}
            )
    found: dict[str, dict] = {}
    for effect in effects:
        key = f"{effect.variant}/{effect.task}"
        found.setdefault(key, {"prompts": compared.get(effect.task, []), "figures": []})
        found[key]["figures"].append(effect.row())
    return found


def placement_dates(placed_at: Sequence[object]) -> dict[str, str]:
    """Post index -> when it was placed onto the map (UTC, to the minute), for placed posts
    (null or NaT: laid out with the map)."""
    return {
        str(index): pd.Timestamp(when).strftime("%Y-%m-%d %H:%M UTC")
        for index, when in enumerate(placed_at)
        if not pd.isna(when)
    }


def cluster_names(found: TaskMap) -> list[str]:
    """Each post's cluster on a map, by its label, for colouring a corpus without labels."""
    if found.clusters is None:
        return [UNCLUSTERED] * len(found.coordinates)
    names = {cluster.number: cluster.label for cluster in found.clusters.clusters}
    return [names.get(int(number), UNCLUSTERED) for number in found.clusters.membership]


def map_title(found: TaskMap, settings: Settings) -> str:
    """ "the default map", or "the base · default map" with variants."""
    name = found.name if not settings.variants else f"{found.variant} · {found.name}"
    return f"the {name} map"
