"""What publishing the database people query costs: ``query_database`` at 800 and 17,038 posts.

The builds' database is made with the project's own writers (the real corpus tables, the
sample, and per task a FLOAT[1024] vector, Qwen3-Embedding-0.6B's size, and a map point per
post), then copied whole by ``copy_database``, as the asset does after every complete build.
Vectors are random unit vectors: a copy's cost depends on the bytes, and embeddings do not
compress either way.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pandas as pd

from benchmarks.results import table, write_section
from benchmarks.workspace import archive, work_dir
from qwen_assets.defs.embedding_assets import embedding_columns, vectors_table
from qwen_assets.defs.projection_assets import COORDINATE_COLUMNS
from qwen_assets.pipeline.corpus import load_raw_newsgroups, stratified_sample
from qwen_assets.pipeline.query import create_views
from qwen_assets.pipeline.storage import (
    connect,
    copy_database,
    replace_partitions,
    replace_table,
)
from qwen_assets.settings import BASE_VARIANT, CorpusSettings, default_settings_path, load_settings

TASKS = ["default", "topic", "sentiment", "toxicity"]
DIMENSIONS = 1024
DEMO = load_settings(default_settings_path()).corpus  # the demo's 10 groups x 80
SIZES = {
    "800": DEMO,
    "17,038": DEMO.model_copy(update={"categories": "all", "per_category": "all"}),
}
# The default (any DuckDB since 1.0 opens it), the first with the current compression, ours.
FORMATS = ("v1.0.0", "v1.5.0", "latest")
REPEATS = 3


def build_database(path: str, raw: pd.DataFrame, corpus: CorpusSettings) -> int:
    sample = stratified_sample(raw, corpus).frame
    replace_table(path, "raw_newsgroups", raw)
    replace_table(path, "newsgroups_sample", sample)
    rng = np.random.default_rng(0)
    ids = sample["doc_id"].tolist()
    vectors, points = {}, {}
    for task in TASKS:
        unit = rng.normal(size=(len(ids), DIMENSIONS)).astype(np.float32)
        vectors[task] = vectors_table(task, ids, unit / np.linalg.norm(unit, axis=1)[:, None])
        xy = rng.normal(size=(len(ids), 4))
        points[task] = pd.DataFrame(
            {"variant": BASE_VARIANT, "task": task, "doc_id": ids, "x": xy[:, 0], "y": xy[:, 1]}
            | {"x_aligned": xy[:, 2], "y_aligned": xy[:, 3]}
        )
    replace_partitions(path, "task_embeddings", embedding_columns(DIMENSIONS), vectors, TASKS)
    replace_partitions(path, "umap_coordinates", COORDINATE_COLUMNS, points, TASKS)
    with connect(path) as connection:
        create_views(connection)
    return len(ids)


def run() -> str:
    root = work_dir() / "publish"
    root.mkdir(parents=True, exist_ok=True)
    raw = load_raw_newsgroups(archive())
    rows = []
    for label, corpus in SIZES.items():
        source = root / f"build-{label.replace(',', '')}.duckdb"
        source.unlink(missing_ok=True)
        documents = build_database(str(source), raw, corpus)
        for storage_format in FORMATS:
            target = root / f"query-{label.replace(',', '')}-{storage_format}.duckdb"
            seconds = []
            for _ in range(REPEATS):
                started = time.monotonic()
                published = copy_database(str(source), str(target), readable_by=storage_format)
                seconds.append(time.monotonic() - started)
            rows.append(
                [
                    f"{documents:,} x {len(TASKS)}",
                    storage_format,
                    f"{statistics.median(seconds):.2f}",
                    f"{source.stat().st_size / 2**20:.0f} MB",
                    f"{published.bytes / 2**20:.0f} MB",
                ]
            )
    body = (
        f"`copy_database` (what `query_database` runs) copying the builds' database whole "
        f"into the file people query, median of {REPEATS}; the builds' database holds the real "
        f"corpus tables and, per task, a FLOAT[{DIMENSIONS}] vector and a map point per post.\n\n"
        + table(
            [
                "posts x tasks",
                "readable_by",
                "seconds",
                "builds' database",
                "database people query",
            ],
            rows,
        )
    )
    write_section("publish", "Publishing the database people query", body)
    return body


if __name__ == "__main__":
    print(run())
