"""The site's own steps at 10,000 to 100,000 posts: neighbours, the quality figures, the
clusters and the payload (time and peak memory), then the explorer in Chromium (first draw and
switching tasks).

The corpus is synthetic: 384-dimension vectors around 20 centres (as ``map_growth`` makes
them) for each of the four tasks, a short text per post drawn from its centre's words, random
scores. The default task's layout is UMAP's (its time is ``map-growth``'s); the other tasks'
layouts are that one turned and shifted, since what drawing and clustering cost depends on the
number of posts, not on which layout they are in. Each size runs in its own process, so its
peak memory is its own. Every step is the project's own function (``site_contents`` runs
neighbours, figures, clusters and the payload for every map, as the ``site_data`` asset does).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.map_growth import vectors
from benchmarks.results import in_child, peak_mb, table, write_section
from benchmarks.workspace import work_dir

SIZES = [10_000, 30_000, 100_000]
CENTRES = 20
TASKS = ["default", "topic", "sentiment", "toxicity"]


def corpus(count: int) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Documents (doc_id, category, text, preview), each task's vectors, per-post scores."""
    rng = np.random.default_rng(1)
    centre = rng.integers(0, CENTRES, size=count)
    words = [[f"w{c}x{i}" for i in range(30)] for c in range(CENTRES)]
    common = [f"c{i}" for i in range(200)]
    texts = [
        " ".join(rng.choice(words[c], 12).tolist() + rng.choice(common, 30).tolist())
        for c in centre
    ]
    documents = pd.DataFrame(
        {
            "doc_id": [f"post/{n}" for n in range(count)],
            "category": [f"group-{c}" for c in centre],
            "text": texts,
            "preview": [text[:160] for text in texts],
        }
    )
    per_task = {task: vectors(count, seed=seed) for seed, task in enumerate(TASKS)}
    scores = {name: rng.normal(size=count) for name in ("sentiment", "hostility", "length")}
    return documents, per_task, scores


def child(count: int, site: str) -> None:
    from qwen_assets.pipeline.clusters import cluster_map, min_cluster_size
    from qwen_assets.pipeline.metrics import nearest_neighbours, task_quality
    from qwen_assets.pipeline.projection import umap_layout
    from qwen_assets.pipeline.site import write_pages, write_payload
    from qwen_assets.pipeline.site_build import site_contents
    from qwen_assets.settings import parse_settings
    from qwen_assets.testing import settings_dict

    settings = parse_settings(settings_dict(site={"output_dir": site}))
    documents, per_task, scores = corpus(count)
    figures: dict[str, float] = {}
    started = time.monotonic()
    base = umap_layout(per_task["default"], settings.umap)
    figures["umap_s"] = time.monotonic() - started
    layouts = {}
    for turn, task in enumerate(TASKS):
        angle = turn * np.pi / 5
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        layouts[task] = base @ rotation.T + turn

    # One map's steps, one by one (the payload below runs each for every map).
    vectors_one, layout_one = per_task["topic"], layouts["topic"]
    started = time.monotonic()
    neighbours, _ = nearest_neighbours(vectors_one, settings.site.neighbours)
    figures["neighbours_s"] = time.monotonic() - started
    reference, _ = nearest_neighbours(per_task["default"], settings.site.neighbours)
    labels = np.unique(documents["category"], return_inverse=True)[1]
    started = time.monotonic()
    task_quality(
        vectors_one,
        layout_one,
        labels,
        neighbours,
        reference,
        per_task["default"],
        sample_size=settings.site.quality_sample_size,
    )
    figures["quality_s"] = time.monotonic() - started
    started = time.monotonic()
    cluster_map(
        layout_one,
        documents["text"].tolist(),
        min_size=min_cluster_size(count, settings.site.label_min_share),
        words=settings.site.label_words,
    )
    figures["clusters_s"] = time.monotonic() - started

    def read_map(variant: str, task: str):
        return per_task[task], layouts[task], [None] * count

    started = time.monotonic()
    contents = site_contents(settings, documents, scores, read_map)
    figures["site_contents_s"] = time.monotonic() - started
    started = time.monotonic()
    written = write_payload(contents.payload, Path(site), documents["text"].tolist())
    write_pages(Path(site), settings.task_names, webgl=count > settings.site.webgl_above)
    figures["write_s"] = time.monotonic() - started
    figures["payload_bytes"] = written.bytes
    figures["peak_mb"] = peak_mb()
    print(json.dumps(figures))


def run() -> str:
    from playwright.sync_api import sync_playwright

    from benchmarks.site_speed import measure
    from qwen_assets.testing import CHROMIUM_ARGS, chromium_path

    rows, pages = [], []
    for count in SIZES:
        site = work_dir() / f"site-scale-{count}" / "site"
        figures = in_child("benchmarks.site_scale", str(count), str(site))
        rows.append(
            [
                f"{count:,}",
                f"{figures['umap_s']:.0f}",
                f"{figures['neighbours_s']:.1f}",
                f"{figures['quality_s']:.1f}",
                f"{figures['clusters_s']:.1f}",
                f"{figures['site_contents_s']:.0f}",
                f"{figures['write_s']:.1f}",
                f"{figures['payload_bytes'] / 1e6:,.1f}",
                f"{figures['peak_mb']:,.0f}",
            ]
        )
        pages.append((count, site))
    drawn = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        for count, site in pages:
            seen = measure(browser, site)
            drawn.append(
                [
                    f"{count:,}",
                    f"{seen['first_draw_bytes'] / 1e6:,.1f}",
                    f"{seen['render_ms']:,.0f}",
                    f"{seen['details_ms']:,.0f}",
                    f"{seen['switch_ms']:,.0f}",
                ]
            )
        browser.close()
    body = (
        "The site's steps on a synthetic corpus of 4 tasks (384-dimension vectors around 20 "
        "centres, a short text per post from its centre's words; the default layout by UMAP, "
        "the other three that layout turned, as drawing and clustering cost the same on any "
        "layout). Seconds for one map's UMAP, its 10 nearest neighbours (full dimension: "
        "exact in blocks up to 20,000 posts, NNDescent above), its quality figures (the "
        "quadratic ones on a 4,000-post sample), its labelled clusters (HDBSCAN on the map, c-TF-IDF labels); then every "
        "map's figures, neighbours, clusters and the payload together (`site_contents`, as the "
        "`site_data` asset runs it), and writing the files; the process's peak memory.\n\n"
        + table(
            [
                "posts",
                "UMAP s (1 map)",
                "neighbours s (1 map)",
                "figures s (1 map)",
                "clusters s (1 map)",
                "all 4 maps s",
                "writing s",
                "data.json MB",
                "peak MB",
            ],
            rows,
        )
        + "\n\nThe explorer in headless Chromium from disk, median of 3 loads: megabytes "
        "loaded before the first draw (`data.js`), milliseconds to the drawn map and to its "
        "details (hover texts, neighbours), and to redraw on a task switch (WebGL).\n\n"
        + table(["posts", "data.js MB", "first draw ms", "details loaded ms", "switch ms"], drawn)
    )
    write_section("site-scale", "The site at 10,000 to 100,000 posts", body)
    return body


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(int(sys.argv[2]), sys.argv[3])
    else:
        print(run())
