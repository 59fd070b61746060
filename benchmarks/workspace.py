"""Where the benchmarks keep their projects: benchmarks/.work (or BENCH_WORK), with one
embedding cache shared by all of them, so that a vector is computed once across runs."""

from __future__ import annotations

import os
from pathlib import Path

from qwen_assets.settings import ENVIRONMENT_OVERRIDES
from qwen_assets.testing import (
    TEST_MAX_SEQ_LENGTH,
    TEST_MODEL_NAME,
    minilm_path,
    settings_dict,
    write_settings,
)
from qwen_assets.testing.embedding_server import EmbeddingServer

ARCHIVE_ENV = next(
    variable for variable, key in ENVIRONMENT_OVERRIDES.items() if key == ("corpus", "archive")
)


def work_dir() -> Path:
    root = Path(os.environ.get("BENCH_WORK") or Path(__file__).with_name(".work"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def archive() -> str:
    path = os.environ.get(ARCHIVE_ENV)
    if not path:
        raise SystemExit(f"set {ARCHIVE_ENV} to the 20news-bydate.tar.gz archive")
    return path


def project(
    name: str,
    corpus: dict | None = None,
    embedding: dict | None = None,
    *,
    own_cache: bool = False,
    automation: dict | None = None,
) -> Path:
    """A settings file for a project under the work folder; the small local model unless
    ``embedding`` says otherwise, and the shared cache unless ``own_cache``. Returns the
    settings path."""
    root = work_dir() / name
    root.mkdir(parents=True, exist_ok=True)
    raw = settings_dict(
        corpus={"archive": archive(), **(corpus or {})},
        embedding=embedding
        or {
            "model": "all-MiniLM-L6-v2",
            "backend": "local",
            "local": {
                "model": minilm_path(),
                "device": "cpu",
                "max_seq_length": TEST_MAX_SEQ_LENGTH,
                "batch_size": 32,
            },
        },
        storage={
            "database": str(root / "warehouse.duckdb"),
            "embedding_cache": str((root if own_cache else work_dir()) / "cache.duckdb"),
        },
        site={"output_dir": str(root / "site")},
        automation=automation or {},
    )
    return write_settings(root / "settings.toml", raw)


def minilm_server() -> EmbeddingServer:
    """A started loopback OpenAI-compatible server answering with the small real model, so a
    benchmark counts real requests and pays a real model's time."""
    import numpy as np

    from qwen_assets.pipeline.embedding.local import load_model

    model = load_model(minilm_path(), "cpu", TEST_MAX_SEQ_LENGTH)
    return EmbeddingServer(
        lambda texts: np.asarray(model.encode(texts, batch_size=16, show_progress_bar=False))
    ).start()


def through(server: EmbeddingServer) -> dict:
    """The ``embedding`` settings of a project embedding through ``server``."""
    return {
        "model": TEST_MODEL_NAME,
        "backend": "http",
        "http": {"base_url": server.base_url, "max_in_flight": 4},
    }
