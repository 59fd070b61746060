"""Run the benchmarks: ``python -m benchmarks.run [NAME ...]`` (names below; default: all).

Each writes its section of benchmarks/RESULTS.md. Needs the dev extra and, for the pipeline
benchmarks, QWEN_ASSETS_NEWSGROUPS_ARCHIVE (as the tests do).
"""

from __future__ import annotations

import argparse
import importlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BENCHMARKS = {
    "http": "benchmarks.http_throughput",
    "incremental": "benchmarks.incremental",
    "edit-to-site": "benchmarks.edit_to_site",
    "slow-server": "benchmarks.slow_server",
    "growth": "benchmarks.growth",
    "render-scale": "benchmarks.render_scale",
    "map-growth": "benchmarks.map_growth",
    "site-scale": "benchmarks.site_scale",
    "local-cpu": "benchmarks.local_cpu",
    "local-gpu": "benchmarks.local_gpu",
    "publish": "benchmarks.publish",
    "site": "benchmarks.site_speed",
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("names", nargs="*", choices=[*BENCHMARKS, []], help="default: all")
    names = parser.parse_args().names or list(BENCHMARKS)
    for name in names:
        print(f"== {name}")
        print(importlib.import_module(BENCHMARKS[name]).run())


if __name__ == "__main__":
    main()
