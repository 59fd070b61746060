"""The in-process backend: a sentence-transformers model on CUDA, Apple MPS or the CPU.

Needs the ``local`` extra. Any sentence-transformers model name or local folder works, so
air-gapped users point ``embedding.local.model`` at a downloaded copy.

A task's texts are sorted by their length in tokens and cut into batches of at most
``embedding.local.batch_tokens`` padded tokens (longest first), one forward pass each: little
padding, few calls, and on a GPU batches large enough to keep it busy. Each batch's vectors go
to the cache as it finishes. A batch that runs out of GPU memory is split in two and retried,
and the budget shrinks for the rest. On a CPU with int8 dot-product instructions,
``embedding.local.runtime = "onnx-int8"`` (or "auto") runs the same model faster with 8-bit
weights (``quantized.py``; the ``onnx`` extra).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from qwen_assets.pipeline.embedding import hardware
from qwen_assets.pipeline.embedding.core import (
    Batch,
    Deliver,
    EmbeddingConfigError,
    EmbeddingError,
    announce,
)
from qwen_assets.settings import LocalSettings

# Texts and prefix -> their vectors: a numpy array, a tensor, or vectors on their way from
# the GPU (``Arriving``); ``finished`` has them as numbers.
Encode = Callable[[list[str], str], Any]
# Tokens a prompt must leave for the text, or the text hardly shapes its vector.
MIN_TEXT_TOKENS = 8


@dataclass(frozen=True)
class Arriving:
    """A batch's vectors being copied from the GPU into host memory, behind its forward pass
    on the device's queue: ready once ``copied`` has happened, whatever was queued after."""

    host: Any  # a tensor in page-locked host memory
    copied: Any  # a torch.cuda.Event recorded after the copy


@lru_cache(maxsize=2)
def load_model(
    name_or_path: str, device: str, max_seq_length: int | None, number_format: str = "float32"
) -> Any:
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
    kwargs = {} if device == "mps" else {"dtype": getattr(torch, number_format)}
    try:
        model = SentenceTransformer(name_or_path, device=device, model_kwargs=kwargs)
    except OSError as error:
        why = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
        raise EmbeddingConfigError(
            f"cannot load the model {name_or_path!r} ({why.rstrip('.')}): name a "
            "sentence-transformers model or a folder holding one in embedding.local.model (on "
            "a machine without internet, a folder), or use the HTTP backend with an API key; "
            "to see it all work with a small model first: qwen-assets try"
        ) from None
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model.eval()


def token_batches(
    lengths: Sequence[int], budget: int, max_texts: int | None = None
) -> list[list[int]]:
    """Positions of the texts, longest first, in batches whose padded size (texts x the
    longest one's tokens) stays within ``budget``; a text longer than it goes alone. (Cutting
    batches where lengths drop, to pad less, made more passes and was slower on a GPU.)"""
    order = sorted(range(len(lengths)), key=lambda index: (-lengths[index], index))
    batches: list[list[int]] = []
    for index in order:
        current = batches[-1] if batches else None
        if (
            current is not None
            and (len(current) + 1) * lengths[current[0]] <= budget
            and (max_texts is None or len(current) < max_texts)
        ):
            current.append(index)
        else:
            batches.append([index])
    return batches


def is_out_of_memory(error: BaseException) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


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
        requested = "cpu" if settings.runtime == "onnx-int8" else settings.device
        device = hardware.pick_device(requested)
        self.runtime = hardware.resolve_runtime(settings.runtime, device)
        self.device = "cpu" if self.runtime.name == "onnx-int8" else device
        self.number_format = hardware.number_format(self.device)
        self.budget: int | None = None  # padded tokens per pass, once the model is loaded
        self._loaded: tuple[Any, Encode] | None = None

    def watch(self) -> None:
        self.requests = self.retries = 0

    @property
    def summary(self) -> str:
        """For people: "local backend on cuda, bfloat16, runtime torch (as set), batches of up
        to 65,536 tokens"."""
        budget = f", batches of up to {self.budget:,} tokens" if self.budget else ""
        numbers = "8-bit weights" if self.runtime.name == "onnx-int8" else self.number_format
        return (
            f"local backend on {self.device}, {numbers}, runtime "
            f"{self.runtime.name} ({self.runtime.reason}){budget}"
        )

    def batches(self, texts: Sequence[str], prefix: str, batch_size: int) -> list[Batch]:
        """Batches by token budget (``batch_size``, the API's request size, does not apply)."""
        model, _ = self._load()
        self._check_room(model, prefix)
        lengths = self._token_lengths(model, [prefix + text for text in texts])
        return [
            Batch(
                f"batch {number + 1}",
                tuple(group),
                tuple(texts[i] for i in group),
                tuple(lengths[i] for i in group),
            )
            for number, group in enumerate(
                token_batches(lengths, self.budget or 1, self.settings.batch_size)
            )
        ]

    def _within_budget(self, batch: Batch) -> list[Batch]:
        """``batch`` (longest text first) in consecutive parts of at most the budget each."""
        groups = token_batches(batch.tokens, self.budget or 1, self.settings.batch_size)
        if len(groups) == 1:
            return [batch]
        return [
            batch.part(group[0], group[-1] + 1, f".{number + 1}")
            for number, group in enumerate(groups)
        ]

    async def embed_batches(self, batches: Sequence[Batch], prefix: str, deliver: Deliver) -> None:
        """One pass per batch. On a GPU a pass is queued before the previous one's vectors
        are fetched and cached, so tokenizing and caching overlap the device's work.

        In this thread, not a worker: Ctrl-C or a run's termination then stops a batch (or a
        first export) where it is, rather than after it, which can be minutes on a CPU."""
        _, encode = self._load()
        pending = list(batches)
        queued: tuple[Batch, Any] | None = None
        while pending or queued:
            started = None
            if pending:
                batch = pending.pop(0)
                try:
                    started = (batch, encode(list(batch.texts), prefix))
                except Exception as error:
                    if not is_out_of_memory(error):
                        raise
                    if queued:
                        self._deliver(queued, deliver)
                        queued = None
                    halves = self._after_running_out(batch, error)
                    pending = halves + [
                        part for rest in pending for part in self._within_budget(rest)
                    ]
                    continue
            if queued:
                self._deliver(queued, deliver)
            queued = started

    def _deliver(self, queued: tuple[Batch, Any], deliver: Deliver) -> None:
        batch, vectors = queued
        self.requests += 1
        deliver(batch, finished(vectors), sum(batch.tokens))

    def _after_running_out(self, batch: Batch, error: BaseException) -> list[Batch]:
        """The batch the device had no memory for, in halves; and a budget halved for the
        rest, so that one out-of-memory error is not followed by one per batch."""
        if len(batch.texts) == 1:
            raise EmbeddingError(
                f"{batch.label}: one text of {max(batch.tokens, default=0)} tokens does not fit "
                f"in the memory of {self.device}; set embedding.local.max_seq_length lower"
            ) from error
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
        self.retries += 1
        self.budget = max(hardware.MIN_BATCH_TOKENS, batch.padded_tokens // 2)
        announce(
            self.log,
            f"{batch.label} ({len(batch.texts)} texts) ran out of memory on {self.device}: "
            f"split in two; batches of up to {self.budget:,} tokens from now on",
        )
        return list(batch.halves())

    def _load(self) -> tuple[Any, Encode]:
        """The model (and on first use its export for a faster runtime), and its encoder."""
        if self._loaded is not None:
            return self._loaded
        if self.runtime.warning:
            announce(self.log, self.runtime.warning)
        model = load_model(
            self.model_name, self.device, self.settings.max_seq_length, self.number_format
        )
        self.budget = self._budget(model)
        if self.runtime.name == "torch":
            encode: Encode = lambda texts, prefix: self._encode(model, texts, prefix)  # noqa: E731
        else:
            from qwen_assets.pipeline.embedding import quantized

            quantized.require_onnx_runtime()
            encoder = quantized.quantized_encoder(
                self.model, model, Path(self.settings.exported_models), self.log
            )
            encode = encoder.encode
        self.log.info("loaded %s: %s", self.model_name, self.summary)
        self._loaded = (model, encode)
        return self._loaded

    def _budget(self, model: Any) -> int:
        if self.settings.batch_tokens != "auto":
            return self.settings.batch_tokens
        config = getattr(getattr(model[0], "auto_model", None), "config", None)
        hidden = getattr(config, "hidden_size", None) or 1024
        width = 4 if self.number_format == "float32" else 2
        return hardware.batch_tokens(self.device, hidden, width)

    @staticmethod
    def _check_room(model: Any, prefix: str) -> None:
        """Refuse a prompt that fills the model's token limit: every text would be cut
        away, and every vector would be the same."""
        if not prefix:
            return
        limit = model.max_seq_length
        used = len(model.tokenizer(prefix, add_special_tokens=True)["input_ids"])
        if used >= limit - MIN_TEXT_TOKENS:
            raise EmbeddingConfigError(
                f"the prompt before each text takes {used} tokens of the model's limit of "
                f"{limit}, leaving no room for the text: shorten the instruction (or raise "
                "embedding.local.max_seq_length)"
            )

    @staticmethod
    def _token_lengths(model: Any, prompts: list[str]) -> list[int]:
        """Each prompt's length in tokens, as the model will see it (cut at its limit)."""
        tokenizer = model.tokenizer
        limit = model.max_seq_length
        ids = tokenizer(prompts, truncation=True, max_length=limit, add_special_tokens=True)
        return [len(row) for row in ids["input_ids"]]

    @staticmethod
    def _encode(model: Any, texts: list[str], prefix: str) -> Any:
        """One forward pass, as ``SentenceTransformer.encode`` makes it (its preprocessing,
        modules and pooling), left on the device: the caller fetches it when it needs it.
        (``encode`` itself would sort and batch again, and wait for every batch.)"""
        import torch

        features = model.preprocess(texts, prompt=prefix or None)
        features = {
            name: value.to(model.device, non_blocking=True)
            if isinstance(value, torch.Tensor)
            else value
            for name, value in features.items()
        }
        with torch.inference_mode():
            vectors = model(features)["sentence_embedding"].float()
            if vectors.device.type != "cuda":
                return vectors
            # Copied now, so that fetching this batch waits for it alone, not for the next
            # batch queued behind it.
            host = vectors.to("cpu", non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
            return Arriving(host, copied)


def finished(vectors: Any) -> np.ndarray:
    """A batch's vectors on the CPU as float32 numbers (waiting for the device if needed)."""
    if isinstance(vectors, np.ndarray):
        return vectors
    if isinstance(vectors, Arriving):
        vectors.copied.synchronize()
        return vectors.host.numpy()
    return vectors.float().cpu().numpy()
