"""What a build will pay for, said before it pays: per stale map, the texts its cache lacks
and the backend that would embed them; for the in-process model, the time it will take at
the speed this machine measured last (Dagster keeps it: each embedding materialization
records its texts and seconds)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import duckdb
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from qwen_assets.defs.partitions import MapGrid
from qwen_assets.pipeline.embedding import resolve_backend
from qwen_assets.pipeline.embedding.cache import EmbeddingCache, prompt_key
from qwen_assets.pipeline.embedding.core import duration
from qwen_assets.pipeline.embedding.identity import cache_model, prompt_prefix
from qwen_assets.pipeline.storage import StorageError, read_table
from qwen_assets.settings import DEFAULT_MODEL, Settings

SAMPLE_SQL = "SELECT text FROM newsgroups_sample ORDER BY position"
EMBEDDINGS = AssetKey("task_embeddings")
TIMED_AT_LEAST = 16  # texts: a materialization that embedded fewer says little of the speed
LOOKED_AT = 50  # the newest embedding materializations searched for a speed
LONG_SECONDS = 10 * 60  # a build longer than this is told the faster ways
FASTER = (
    'faster: an API (embedding.backend = "http" with a key), a GPU, or '
    'embedding.local.runtime = "onnx-int8" on a CPU with int8 instructions (docs/backends.md)'
)


@dataclass(frozen=True)
class Speed:
    """How fast the in-process model embedded on this machine, as its last build measured."""

    texts_per_second: float
    runs_on: str  # the backend's summary: device, number format, runtime


def measured_speed(instance: DagsterInstance, model: str) -> Speed | None:
    """The speed of the newest materialization of ``task_embeddings`` that ran ``model`` in
    process and embedded enough texts to time."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=EMBEDDINGS), limit=LOOKED_AT, ascending=False
    ).records
    for record in records:
        materialization = record.asset_materialization
        if materialization is None:
            continue
        metadata = {key: value.value for key, value in materialization.metadata.items()}
        computed, seconds = metadata.get("computed"), metadata.get("embedding_seconds")
        if (
            metadata.get("backend") == "local"
            and metadata.get("model") == model
            and isinstance(computed, int)
            and computed >= TIMED_AT_LEAST
            and isinstance(seconds, int | float)
            and seconds > 0
        ):
            return Speed(computed / seconds, str(metadata.get("runs_on", "")))
    return None


def local_time(
    model: str, texts: int | None, speed: Speed | None, *, at_most: bool = False
) -> list[str]:
    """What ``texts`` to embed in process with ``model`` will take: at the measured ``speed``,
    or said to be unknown until the first batches; with the faster ways when it is long (or,
    for the default model, not measured yet). ``texts`` None: not counted before the sample
    is drawn."""
    count = f"{'up to ' if at_most else ''}{texts} texts" if texts else "the sample's texts"
    if speed is None:
        said = [
            f"time: {count} for the in-process model, whose speed on this machine is not "
            "measured yet: the progress line says the time left after two batches"
        ]
        if model == DEFAULT_MODEL:  # what the benchmarks measured (benchmarks/RESULTS.md)
            said[0] += " (2 CPU cores take about 1.8 h for the default 800 posts x 4 maps)"
            said.append(FASTER)
        return said
    rate = (
        f"{speed.texts_per_second:.2f} texts/s, as its last build here measured ({speed.runs_on})"
    )
    if texts is None:  # "all" the posts of each group: counted once the sample is drawn
        return [f"time: {count} for the in-process model at {rate}", FASTER]
    seconds = texts / speed.texts_per_second
    lines = [f"time: {count} for the in-process model, about {duration(seconds)} at {rate}"]
    return [*lines, FASTER] if seconds > LONG_SECONDS else lines


def embedding_cost(
    settings: Settings,
    partition_keys: Sequence[str],
    *,
    sample_rebuilt: bool = False,
    speed_of: Callable[[str], Speed | None] = lambda model: None,
) -> list[str]:
    """A "cost" line per map of ``partition_keys``: how many texts it will embed, with what; then,
    for maps the in-process model embeds, the time it will take (``speed_of``: the measured
    speed of a model). The count is for the sample as built now, unless ``sample_rebuilt``
    (it is rebuilt first)."""
    if not partition_keys:
        return []
    in_process: dict[str, int | None] = {}  # model -> texts to embed in process (None: unknown)

    def count(model: str, texts: int | None) -> None:
        so_far = in_process.get(model, 0)
        in_process[model] = None if so_far is None or texts is None else so_far + texts

    grid = MapGrid(settings)
    texts: list[str] | None = None
    if not sample_rebuilt:
        try:
            texts = read_table(settings.storage.build_database, SAMPLE_SQL, wait_seconds=2.0)[
                "text"
            ].tolist()
        except (StorageError, duckdb.Error):  # not built yet, or busy
            texts = None
    lines: list[str] = []
    for key in partition_keys:
        variant, task = grid.split(key)
        embedding = settings.embedding_of(variant)
        backend, _ = resolve_backend(embedding)
        size = f" at {embedding.dimensions} dimensions" if embedding.dimensions else ""
        with_what = f"with {backend} (model {embedding.model}{size})"
        if texts is None:
            lines.append(
                f"cost {grid.label(key)}: embeds what the cache lacks of the new sample, {with_what}"
            )
            if backend == "local":
                count(embedding.model, _sample_size(settings))
            continue
        prefix = prompt_prefix(settings, task, variant)
        cache = EmbeddingCache(
            settings.storage.embedding_cache, cache_model(embedding, backend), embedding.dimensions
        )
        prompts = {prompt_key(prefix + text) for text in texts}
        try:
            missing = cache.count_missing(list(prompts))
        except StorageError as error:  # the cache is busy: the build goes on without the count
            lines.append(f"cost {grid.label(key)}: unknown ({error}), {with_what}")
            continue
        requests = f", {-(-missing // embedding.batch_size)} requests" if backend == "http" else ""
        if backend == "local" and missing:
            count(embedding.model, missing)
        lines.append(
            f"cost {grid.label(key)}: {missing} texts to embed {with_what}{requests}, "
            f"{len(prompts) - missing} from the cache"
            if missing
            else f"cost {grid.label(key)}: nothing to embed, {len(prompts)} texts from the cache"
        )
    for model, texts_to_embed in in_process.items():
        lines += local_time(model, texts_to_embed, speed_of(model), at_most=texts is None)
    return lines


def _sample_size(settings: Settings) -> int | None:
    """At most how many posts the sample will hold (the groups may hold fewer); None where
    only the corpus knows: "all" of each group, or a file's labels."""
    corpus = settings.corpus
    if corpus.from_file:
        return corpus.sample_size
    if not isinstance(corpus.per_category, int):
        return None
    return corpus.per_category * len(corpus.category_names)
