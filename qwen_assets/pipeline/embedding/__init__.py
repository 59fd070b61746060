"""Embedding backends: Qwen3-Embedding over an OpenAI-compatible HTTP API or in process.

``embed_texts`` is the one entry point the pipeline and the CLI use; the backends only
turn batches of texts into vectors.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np

from qwen_assets.pipeline.embedding.cache import EmbeddingCache
from qwen_assets.pipeline.embedding.core import (
    Backend,
    EmbeddingConfigError,
    EmbeddingError,
    EmbeddingResponseError,
    EmbeddingStats,
    ProgressReport,
    embed_prompts,
)
from qwen_assets.pipeline.embedding.identity import cache_model
from qwen_assets.settings import EmbeddingSettings

__all__ = [
    "EmbeddingConfigError",
    "EmbeddingError",
    "EmbeddingResponseError",
    "EmbeddingStats",
    "ProgressReport",
    "build_backend",
    "embed_texts",
    "open_backend",
    "resolve_backend",
]


def resolve_backend(
    settings: EmbeddingSettings, environ: Mapping[str, str] = os.environ
) -> tuple[str, str]:
    """Which backend runs, and why (for the log)."""
    return settings.backend_here(environ)


def open_backend(
    name: str,
    settings: EmbeddingSettings,
    log: logging.Logger,
    environ: Mapping[str, str] = os.environ,
) -> Backend:
    """The backend ``name`` for ``settings``; an HTTP backend reads its API key from the
    variable the settings name (``http.api_key_env``) now, and passes it nowhere else."""
    api_key = environ.get(settings.http.api_key_env) if name == "http" else None
    return build_backend(name, settings, api_key, log)


def build_backend(
    name: str, settings: EmbeddingSettings, api_key: str | None, log: logging.Logger
) -> Backend:
    if name == "http":
        from qwen_assets.pipeline.embedding.http import HttpBackend

        return HttpBackend(settings.http, settings.model, settings.dimensions, api_key, log)
    from qwen_assets.pipeline.embedding.local import LocalBackend

    return LocalBackend(settings.local, settings.model, settings.dimensions, log)


def embed_texts(
    texts: Sequence[str],
    prefix: str,
    settings: EmbeddingSettings,
    backend: Backend,
    cache_database: str,
    log: logging.Logger,
    label: str = "",
) -> tuple[np.ndarray, EmbeddingStats]:
    """Unit-length vectors for ``prefix + text``, one row per text, in order."""
    cache = EmbeddingCache(cache_database, cache_model(settings, backend.name), settings.dimensions)
    with cache.exclusive(log):
        return embed_prompts(
            texts,
            prefix,
            backend,
            cache,
            batch_size=settings.batch_size,
            dimensions=settings.dimensions,
            log=log,
            label=label,
        )
