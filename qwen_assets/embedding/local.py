"""The in-process backend: a sentence-transformers model on CUDA, Apple MPS or the CPU.

Needs the ``local`` extra. Any sentence-transformers model name or local folder works, so
air-gapped users point ``embedding.local.model`` at a downloaded copy. On a CPU,
``embedding.local.runtime = "onnx-int8"`` runs the same model about twice as fast with
8-bit weights (``quantized.py``; the ``onnx`` extra).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import lru_cache, partial
from pathlib import Path
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
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # its weight-loading bar is not our progress
    kwargs = {"dtype": torch.float32} if device == "cpu" else {}
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
        self.model = model  # the name it goes by (embedding.model)
        self.model_name = settings.model or model  # where it loads from
        self.dimensions = dimensions
        self.log = log
        self.requests = 0
        self.retries = 0
        self.device = "cpu" if settings.runtime != "torch" else pick_device(settings.device)
        self.summary = f"local backend on {self.device}, runtime {settings.runtime}"

    async def embed_batches(self, batches: Sequence[Batch], prefix: str, deliver: Deliver) -> None:
        # In this thread, not a worker: Ctrl-C or a run's termination then stops a batch (or a
        # first export) where it is, rather than after it, which can be minutes on a CPU.
        encode = self._encoder()
        self.log.info("loaded %s: %s", self.model_name, self.summary)
        for batch in batches:
            vectors = encode(list(batch.texts), prefix)
            self.requests += 1
            deliver(batch, vectors, 0)

    def _encoder(self) -> Callable[[list[str], str], np.ndarray]:
        """Loads the model (and on first use exports it for a faster runtime)."""
        model = load_model(self.model_name, self.device, self.settings.max_seq_length)
        if self.settings.runtime == "torch":
            return partial(self._encode, model)
        from qwen_assets.embedding import quantized

        quantized.require_onnx_runtime()
        encoder = quantized.quantized_encoder(
            self.model, model, Path(self.settings.exported_models), self.log
        )
        return partial(encoder.encode, batch_size=self.settings.batch_size)

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
