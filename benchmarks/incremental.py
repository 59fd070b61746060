"""Incremental cost: requests and wall time of a cold build, a rebuild with nothing changed,
one instruction changed, and one UMAP setting changed.

The 800-document demo sample, embedded through a loopback OpenAI-compatible server backed
by the small real model (all-MiniLM-L6-v2), with a fresh cache, so a cold build pays for
every vector as it would against a paid API.
"""

from __future__ import annotations

import math
import time

from benchmarks.results import table, write_section
from benchmarks.workspace import minilm_server, project, through

PROJECT = "incremental"  # its folder under the benchmarks' work folder


def run() -> str:
    from dagster import instance_for_test

    from qwen_assets.cli import rebuild_stale
    from qwen_assets.settings import load_settings

    server = minilm_server()
    settings_path = project(
        PROJECT,
        embedding=through(server),
        own_cache=True,  # a cold build pays for every vector
    )
    for name in ["warehouse.duckdb", "cache.duckdb"]:
        (settings_path.parent / name).unlink(missing_ok=True)
    rows = []
    try:
        with instance_for_test() as instance:

            def step(label: str, expected: str) -> None:
                server.reset()
                started = time.monotonic()
                report = rebuild_stale(
                    instance, load_settings(settings_path), log=lambda line: None
                )
                assert report.succeeded
                rows.append(
                    [
                        label,
                        len(server.received),
                        expected,
                        f"{time.monotonic() - started:.1f}",
                        len(report.run_ids),
                    ]
                )

            batch = load_settings(settings_path).embedding.batch_size
            documents = 800
            step(
                "cold build (empty cache)",
                f"4 x ceil({documents}/{batch}) = {4 * math.ceil(documents / batch)}",
            )
            step("nothing changed", "0")
            settings_path.write_text(
                settings_path.read_text().replace("or neutral", "or neutral, and how strongly")
            )
            step(
                "one instruction changed (sentiment)",
                f"ceil({documents}/{batch}) = {math.ceil(documents / batch)}",
            )
            settings_path.write_text(
                settings_path.read_text().replace("n_neighbors = 15", "n_neighbors = 20")
            )
            step("one UMAP setting changed (n_neighbors)", "0")
    finally:
        server.stop()
    body = (
        "Embedding requests sent to the API and wall time of `qwen-assets build` (the same "
        "code path), 800 documents, 4 tasks, batch 32.\n\n"
        + table(["change", "requests", "target", "seconds", "runs"], rows)
    )
    write_section("incremental", "Incremental cost", body)
    return body


if __name__ == "__main__":
    print(run())
