"""How cost grows: wall time of each asset and peak memory at 800, 5,000 and every document.

Each size is built from nothing by ``qwen-assets build`` logic in its own process (so peak
memory is that build's), on the small local model (all-MiniLM-L6-v2, 128 tokens) with the
benchmarks' shared embedding cache: once the cache is warm, the embedding step is a cache
read and the figures are those of the sample, UMAP and the site.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from benchmarks.results import in_child, peak_mb, table, write_section
from benchmarks.workspace import project

SIZES = {
    "800": {},
    "5000": {"categories": "all", "per_category": 250},
    "all": {"categories": "all", "per_category": "all"},
}
STEPS = [
    "raw_newsgroups",
    "newsgroups_sample",
    "task_embeddings",
    "umap_coordinates",
    "site_data",
    "site_pages",
]


def child(settings_path: str) -> None:
    """Build from nothing; print step seconds, peak memory and the site's payload size."""
    from dagster import DagsterEventType, instance_for_test

    from qwen_assets.cli import rebuild_stale
    from qwen_assets.settings import load_settings

    settings = load_settings(settings_path)
    started = time.monotonic()
    with instance_for_test() as instance:
        report = rebuild_stale(instance, settings, log=lambda line: None)
        assert report.succeeded, report.plan.reasons
        seconds: dict[str, float] = {}
        for run_id in report.run_ids:
            for record in instance.all_logs(run_id, of_type=DagsterEventType.STEP_SUCCESS):
                event = record.dagster_event
                seconds[event.step_key] = event.event_specific_data.duration_ms / 1000
    documents = json.loads((Path(settings.site.output_dir) / "data.json").read_text())
    print(
        json.dumps(
            {
                "seconds": seconds,
                "total": time.monotonic() - started,
                "peak_mb": peak_mb(),
                "documents": len(documents["documents"]["id"]),
                "payload_bytes": (Path(settings.site.output_dir) / "data.json").stat().st_size,
            }
        )
    )


def run() -> str:
    rows = []
    for size, corpus in SIZES.items():
        settings = project(f"growth-{size}", corpus)
        for stale in ["warehouse.duckdb", "site"]:
            target = settings.parent / stale
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        figures = in_child("benchmarks.growth", str(settings))
        rows.append(
            [
                f"{figures['documents']:,}",
                *[f"{figures['seconds'].get(step, 0):.1f}" for step in STEPS],
                f"{figures['total']:.0f}",
                f"{figures['peak_mb']:,.0f}",
                f"{figures['payload_bytes'] / 1e6:.2f} MB "
                f"({figures['payload_bytes'] / figures['documents']:.0f} B/doc)",
            ]
        )
    body = (
        "Seconds per asset step (all four task partitions of a partitioned asset in one "
        "step), whole build, and the build process's peak resident memory. Embeddings come "
        "from the benchmarks' warm cache (computed once with all-MiniLM-L6-v2), so "
        "`task_embeddings` here is the cost of reading the cache and writing the table.\n\n"
        + table(["documents", *STEPS, "total s", "peak MB", "data.json"], rows)
    )
    write_section("growth", "How cost grows with the corpus", body)
    return body


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2])
    else:
        print(run())
