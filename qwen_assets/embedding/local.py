"""The in-process backend: a sentence-transformers model on CUDA, Apple MPS or the CPU.

Needs the ``local`` extra. Any sentence-transformers model name or local folder works, so
air-gapped users point ``embedding.local.model`` at a downloaded copy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from qwen_assets.embedding.core import Batch, Deliver, EmbeddingConfigError
from qwen_assets.settings import LocalSettings


def pick_device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@lru_cache(maxsize=2)
def load_model(name_or_path: str, device: str, max_seq_length: int | None) -> Any:
    """Loaded once per process: the partitions of one run share it."""
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise EmbeddingConfigError(
            "the local backend needs the `local` extra: pip install torch==2.13.0 "
            "'qwen_assets[local]' (or set embedding.backend = \"http\")"
        ) from None
    kwargs = {"torch_dtype": torch.float32} if device == "cpu" else {}
    try:
        model = SentenceTransformer(name_or_path, device=device, model_kwargs=kwargs)
    except OSError as error:
        raise EmbeddingConfigError(
            f"cannot load the model {name_or_path!r} ({error}); name a sentence-transformers "
            "model or a local folder in embedding.local.model"
        ) from None
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model


class LocalBackend:
    name = "local"

    def __init__(
        self, settings: LocalSettings, model: str, dimensions: int | None, log: logging.Logger
    ) -> None:
        self.settings = settings
        self.model_name = settings.model or model
        self.dimensions = dimensions
        self.log = log
        self.requests = 0
        self.retries = 0
        self.device = pick_device(settings.device)

    async def embed_batches(self, batches: Sequence[Batch], prefix: str, deliver: Deliver) -> None:
        model = load_model(self.model_name, self.device, self.settings.max_seq_length)
        self.log.info("local model %s on %s", self.model_name, self.device)
        for batch in batches:
            vectors = await asyncio.to_thread(self._encode, model, list(batch.texts), prefix)
            self.requests += 1
            deliver(batch, vectors, 0)

    def _encode(self, model: Any, texts: list[str], prefix: str) -> np.ndarray:
        return model.encode(
            texts,
            prompt=prefix or None,
            batch_size=self.settings.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
            truncate_dim=self.dimensions,
        )
