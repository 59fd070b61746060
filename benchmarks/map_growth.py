"""A map that grows, from 10,000 to 100,000 posts: projecting it with UMAP against placing
10 % more posts onto it (``pipeline.projection.grown_layout``), time and peak memory.

The vectors are synthetic (384 dimensions, as the stand-in model's, around 20 centres): UMAP's
and the placement's cost depend on the number of posts and their dimension, not on what the
vectors mean. Each size runs in its own process, so its peak memory is its own.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from benchmarks.results import in_child, peak_mb, table, write_section

SIZES = [10_000, 30_000, 100_000]
DIMENSIONS = 384
GROWTH = 0.1


def vectors(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, DIMENSIONS))
    points = centres[rng.integers(0, 20, size=count)] + 0.6 * rng.normal(size=(count, DIMENSIONS))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def child(count: int) -> None:
    from qwen_assets.pipeline.projection import StoredLayout, grown_layout, layout_name
    from qwen_assets.settings import UmapSettings

    settings = UmapSettings()
    grown_count = int(count * (1 + GROWTH))
    every = vectors(grown_count)
    ids = [f"d{number}" for number in range(grown_count)]
    started = time.monotonic()
    first = grown_layout(ids[:count], every[:count], None, "b", settings)
    projected = time.monotonic() - started
    stored = StoredLayout(
        ids[:count],
        first.coordinates,
        first.coordinates,
        [None] * count,
        layout_name("b", first.coordinates),
        layout_name("b", first.coordinates),
    )
    started = time.monotonic()
    grown = grown_layout(ids, every, stored, "b", settings)
    placed = time.monotonic() - started
    assert not grown.projected and grown.placed.sum() == grown_count - count
    print(
        json.dumps(
            {
                "project_s": projected,
                "place_s": placed,
                "peak_mb": peak_mb(),
            }
        )
    )


def run() -> str:
    rows = []
    for count in SIZES:
        figures = in_child("benchmarks.map_growth", str(count))
        rows.append(
            [
                f"{count:,}",
                f"{figures['project_s']:.1f}",
                f"{int(count * GROWTH):,}",
                f"{figures['place_s']:.1f}",
                f"{figures['project_s'] / figures['place_s']:.0f}x",
                f"{figures['peak_mb']:,.0f}",
            ]
        )
    body = (
        "One map (the default UMAP settings: 15 neighbours, min_dist 0.1, euclidean, "
        "random_state 42) of synthetic 384-dimension vectors: seconds to project it with UMAP "
        "(approximate neighbours above 4,096 posts), then to place 10 % more posts onto it "
        "(exact nearest old posts, brute force), and the process's peak resident memory. A "
        "build does one of the two per map and variant.\n\n"
        + table(
            ["posts", "UMAP s", "new posts", "placing s", "placing is faster by", "peak MB"],
            rows,
        )
    )
    write_section("map-growth", "A map that grows: projecting against placing", body)
    return body


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(int(sys.argv[2]))
    else:
        print(run())
