"""A whole-corpus site, built quickly, for the site benchmark's render figures.

How fast the explorer draws depends on how many posts it draws and on the payload's size,
not on what the vectors mean. So this project embeds the whole corpus (every group, every
post) through the project's real HTTP backend against the loopback server, whose vectors come
from scikit-learn's HashingVectorizer (256 dimensions) instead of a neural model: minutes, not
the hour the small model takes on this machine. Everything after the embeddings (UMAP, labels,
neighbours, the payload, the pages) is the real pipeline.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from benchmarks.workspace import archive, work_dir
from qwen_assets.testing import EmbeddingServer, settings_dict, write_settings

PROJECT = "render-all"
DIMENSIONS = 256


def hashed(texts: list[str]) -> np.ndarray:
    from sklearn.feature_extraction.text import HashingVectorizer

    vectors = HashingVectorizer(n_features=DIMENSIONS, alternate_sign=False).transform(texts)
    return vectors.toarray().astype(np.float32) + 1e-6  # no all-zero vector


def run() -> str:
    server = EmbeddingServer(hashed).start()
    try:
        root = work_dir() / PROJECT
        root.mkdir(parents=True, exist_ok=True)
        raw = settings_dict(
            corpus={"archive": archive(), "categories": "all", "per_category": "all"},
            embedding={
                "model": "hashing-256",
                "backend": "http",
                "batch_size": 256,
                "http": {"base_url": server.base_url, "max_in_flight": 4},
            },
            storage={
                "database": str(root / "warehouse.duckdb"),
                "embedding_cache": str(root / "cache.duckdb"),
            },
            site={"output_dir": str(root / "site")},
        )
        settings = write_settings(root / "settings.toml", raw)
        subprocess.run(
            [sys.executable, "-m", "benchmarks.growth", "--child", str(settings)],
            check=True,
            capture_output=True,
            text=True,
        )
    finally:
        server.stop()
    return f"built {root / 'site'}: run `python -m benchmarks.run site` to measure it"


if __name__ == "__main__":
    print(run())
