"""What a build will pay for, said before it pays: per stale map, the texts its cache lacks
and the backend that would embed them."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import duckdb

from qwen_assets.defs.partitions import MapGrid
from qwen_assets.pipeline.embedding import resolve_backend
from qwen_assets.pipeline.embedding.cache import EmbeddingCache, prompt_key
from qwen_assets.pipeline.embedding.identity import cache_model, prompt_prefix
from qwen_assets.pipeline.storage import StorageError, read_table
from qwen_assets.settings import Settings

SAMPLE_SQL = "SELECT text FROM newsgroups_sample ORDER BY position"


def embedding_cost(
    settings: Settings,
    partition_keys: Sequence[str],
    *,
    sample_rebuilt: bool = False,
    environ: Mapping[str, str] = os.environ,
) -> list[str]:
    """One line per map of ``partition_keys``: how many texts it will embed, with what. The
    count is for the sample as built now, unless ``sample_rebuilt`` (it is rebuilt first)."""
    if not partition_keys:
        return []
    grid = MapGrid(settings)
    texts: list[str] | None = None
    if not sample_rebuilt:
        try:
            texts = read_table(settings.storage.build_database, SAMPLE_SQL, wait_seconds=2.0)[
                "text"
            ].tolist()
        except (StorageError, duckdb.Error):  # not built yet, or busy
            texts = None
    lines = []
    for key in partition_keys:
        variant, task = grid.split(key)
        embedding = settings.embedding_of(variant)
        backend, _ = resolve_backend(embedding, environ)
        size = f" at {embedding.dimensions} dimensions" if embedding.dimensions else ""
        with_what = f"with {backend} (model {embedding.model}{size})"
        if texts is None:
            lines.append(
                f"{grid.label(key)}: embeds what the cache lacks of the new sample, {with_what}"
            )
            continue
        prefix = prompt_prefix(settings, task, variant)
        cache = EmbeddingCache(
            settings.storage.embedding_cache, cache_model(embedding, backend), embedding.dimensions
        )
        prompts = {prompt_key(prefix + text) for text in texts}
        try:
            missing = cache.count_missing(list(prompts))
        except StorageError as error:  # the cache is busy: the build goes on without the count
            lines.append(f"{grid.label(key)}: unknown ({error}), {with_what}")
            continue
        requests = f", {-(-missing // embedding.batch_size)} requests" if backend == "http" else ""
        lines.append(
            f"{grid.label(key)}: {missing} texts to embed {with_what}{requests}, "
            f"{len(prompts) - missing} from the cache"
            if missing
            else f"{grid.label(key)}: nothing to embed, {len(prompts)} texts from the cache"
        )
    return lines
