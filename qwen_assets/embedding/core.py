"""What every backend shares: batching, validation, the cache, and progress.

A backend only turns batches of texts into raw vectors. ``embed_prompts`` decides which
prompts are missing from the cache, hands them to the backend in batches, validates every
batch, normalises it and writes it to the cache the moment it arrives, then assembles the
matrix in input order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from qwen_assets.embedding.cache import EmbeddingCache, prompt_key


class EmbeddingError(RuntimeError):
    """An embedding run failed; the message says why and what was kept."""


class EmbeddingConfigError(EmbeddingError):
    """The backend cannot start (no key, a refused key, an unknown model)."""


class EmbeddingResponseError(EmbeddingError):
    """A batch came back malformed; nothing of it was cached."""


@dataclass(frozen=True)
class Batch:
    label: str  # "batch 3", or "batch 3.1" once split
    indices: tuple[int, ...]  # positions in the list of texts to embed
    texts: tuple[str, ...]
    tokens: tuple[int, ...] = ()  # each text's length in tokens, where the backend knows it

    def halves(self) -> tuple[Batch, Batch]:
        middle = len(self.texts) // 2
        return self.part(0, middle, ".1"), self.part(middle, len(self.texts), ".2")

    def part(self, start: int, end: int, suffix: str) -> Batch:
        return Batch(
            self.label + suffix,
            self.indices[start:end],
            self.texts[start:end],
            self.tokens[start:end],
        )

    @property
    def padded_tokens(self) -> int:
        """What one forward pass over the batch computes: texts x the longest text."""
        return len(self.texts) * max(self.tokens, default=0)


# A backend reports each finished batch: (batch, raw vectors, tokens used).
Deliver = Callable[[Batch, np.ndarray, int], None]


class Backend(Protocol):
    name: str
    summary: str  # for people: "local backend on cpu (float32), ...", "http backend, <host>"
    requests: int  # requests (or local batches) made so far
    retries: int

    def batches(self, texts: Sequence[str], prefix: str, batch_size: int) -> list[Batch]:
        """How the backend wants ``texts`` cut (an API: ``batch_size`` texts per request)."""
        ...

    async def embed_batches(self, batches: Sequence[Batch], prefix: str, deliver: Deliver) -> None:
        """Embed every batch (``prefix`` + text), calling ``deliver`` as each one completes."""
        ...


@dataclass
class EmbeddingStats:
    backend: str
    model: str
    runs_on: str = ""  # the backend's summary: device and runtime, or host
    total: int = 0
    cache_hits: int = 0
    computed: int = 0
    requests: int = 0
    retries: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def as_metadata(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "runs_on": self.runs_on,
            "model": self.model,
            "texts": self.total,
            "cache_hits": self.cache_hits,
            "computed": self.computed,
            "requests": self.requests,
            "retries": self.retries,
            "tokens_used": self.tokens,
            "embedding_seconds": round(self.seconds, 2),
        }


# Structured progress for whoever shows it live (the command line draws a bar from it); with
# no handler attached, as in the daemon, nothing is printed.
PROGRESS_LOGGER = logging.getLogger("qwen_assets.progress")
PROGRESS_LOGGER.propagate = False
PROGRESS_LOGGER.setLevel(logging.INFO)


def announce(log: logging.Logger, message: str) -> None:
    """A step worth a line where people watch (a model's first export), in the run's log
    and on the command line's display."""
    log.info(message)
    PROGRESS_LOGGER.info(message, extra={"embedding_note": message})


@dataclass(frozen=True)
class ProgressReport:
    """One update: ``done`` of ``total`` texts to embed (cache hits are not counted)."""

    label: str
    backend: str
    model: str
    done: int
    total: int
    cached: int
    retries: int
    rate: float  # texts/s since the first batch; 0 until a second one arrives


@dataclass
class Progress:
    """Reports every batch to ``PROGRESS_LOGGER``, and logs texts done, throughput, retries
    and tokens to the run's log at most every ``interval`` seconds."""

    stats: EmbeddingStats
    log: logging.Logger
    to_compute: int
    label: str = ""
    interval: float = 2.0
    last: float = 0.0
    # The rate counts from the first batch back: loading (or exporting) a model is not speed.
    first_done: int = 0
    first_at: float | None = None

    def report(self) -> None:
        PROGRESS_LOGGER.info(
            "embedding progress",
            extra={
                "embedding_progress": ProgressReport(
                    label=self.label,
                    backend=self.stats.runs_on,
                    model=self.stats.model,
                    done=self.stats.computed,
                    total=self.to_compute,
                    cached=self.stats.cache_hits,
                    retries=self.stats.retries,
                    rate=self.rate(time.monotonic()),
                )
            },
        )

    def rate(self, now: float) -> float:
        if self.first_at is None or now <= self.first_at:
            return 0.0
        return (self.stats.computed - self.first_done) / (now - self.first_at)

    def update(self) -> None:
        now = time.monotonic()
        if self.first_at is None:
            self.first_done, self.first_at = self.stats.computed, now
        self.report()
        if now - self.last < self.interval:
            return
        self.last = now
        rate = self.rate(now)
        self.log.info(
            "embedded %d/%d texts (%.0f%%), %.1f texts/s, about %s left, %d requests, %d retries, "
            "%d tokens",
            self.stats.computed,
            self.to_compute,
            100 * self.stats.computed / max(self.to_compute, 1),
            rate,
            duration((self.to_compute - self.stats.computed) / rate) if rate else "unknown time",
            self.stats.requests,
            self.stats.retries,
            self.stats.tokens,
        )


def duration(seconds: float) -> str:
    """Seconds for people: "45s", "12 min", "3 h 20 min"."""
    if seconds < 90:
        return f"{seconds:.0f}s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def normalise(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Truncate to a Matryoshka size when asked, then scale every row to unit length."""
    if dimensions is not None and vectors.shape[1] > dimensions:
        vectors = vectors[:, :dimensions]
    # In float64: the squares of a float32 vector with tiny components underflow to zero.
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    return (vectors / np.where(norms == 0, 1, norms)).astype(np.float32)


def check_batch(batch: Batch, vectors: np.ndarray, expected_dimension: int | None) -> None:
    """Refuse a batch that would poison the cache."""
    if vectors.ndim != 2 or vectors.shape[0] != len(batch.texts):
        rows = vectors.shape[0] if vectors.ndim >= 1 else 0
        raise EmbeddingResponseError(
            f"{batch.label}: got {rows} vectors for {len(batch.texts)} texts; nothing of it was cached"
        )
    if expected_dimension is not None and vectors.shape[1] != expected_dimension:
        raise EmbeddingResponseError(
            f"{batch.label}: vectors have {vectors.shape[1]} dimensions, expected "
            f"{expected_dimension}; nothing of it was cached"
        )
    if not np.isfinite(vectors).all():
        raise EmbeddingResponseError(
            f"{batch.label}: the response holds NaN or infinite values; nothing of it was cached"
        )
    zeros = int((~vectors.any(axis=1)).sum())
    if zeros:
        raise EmbeddingResponseError(
            f"{batch.label}: the response holds {zeros} all-zero vector(s), which have no "
            "direction; nothing of it was cached"
        )


def make_batches(texts: Sequence[str], batch_size: int) -> list[Batch]:
    """Batches of similar length (longest first), which cuts padding and evens out tokens."""
    order = sorted(range(len(texts)), key=lambda index: -len(texts[index]))
    return [
        Batch(
            f"batch {number + 1}",
            tuple(order[start : start + batch_size]),
            tuple(texts[index] for index in order[start : start + batch_size]),
        )
        for number, start in enumerate(range(0, len(order), batch_size))
    ]


def embed_prompts(
    texts: Sequence[str],
    prefix: str,
    backend: Backend,
    cache: EmbeddingCache,
    *,
    batch_size: int,
    dimensions: int | None,
    log: logging.Logger,
    label: str = "",
) -> tuple[np.ndarray, EmbeddingStats]:
    """Vectors for ``prefix + text`` of every text, computing only what the cache lacks.
    ``label`` names the texts in progress reports (the task)."""
    started = time.monotonic()
    stats = EmbeddingStats(backend=backend.name, model=cache.model, total=len(texts))
    keys = [prompt_key(prefix + text) for text in texts]
    found = cache.lookup(keys)
    stats.cache_hits = sum(key in found for key in keys)
    missing: dict[str, str] = {}
    for key, text in zip(keys, texts, strict=True):
        if key not in found:
            missing.setdefault(key, text)
    missing_keys, missing_texts = list(missing), list(missing.values())
    # Planning may load a model (a local backend batches by its tokens): only when needed.
    batches = backend.batches(missing_texts, prefix, batch_size) if missing_texts else []
    stats.runs_on = backend.summary
    log.info(
        "%s, model %s: %d texts, %d from the cache, %d to embed",
        backend.summary,
        cache.model,
        len(texts),
        stats.cache_hits,
        len(missing_texts),
    )
    expected = dimensions or (len(next(iter(found.values()))) if found else None)
    progress = Progress(stats, log, len(missing_texts), label)
    progress.report()

    def deliver(batch: Batch, raw: np.ndarray, tokens: int) -> None:
        nonlocal expected
        raw = np.asarray(raw, dtype=np.float32)
        check_batch(batch, raw if dimensions is None else raw[:, :dimensions], expected)
        vectors = normalise(raw, dimensions)
        expected = vectors.shape[1]
        batch_keys = [missing_keys[index] for index in batch.indices]
        cache.store(batch_keys, vectors)
        found.update(zip(batch_keys, vectors, strict=True))
        stats.computed += len(batch.texts)
        stats.tokens += tokens
        stats.requests, stats.retries = backend.requests, backend.retries
        progress.update()

    if missing_texts:
        try:
            _run(backend.embed_batches(batches, prefix, deliver))
        except EmbeddingError as error:
            raise type(error)(
                f"{error} ({stats.computed} of {len(missing_texts)} new texts were embedded "
                "and are cached; a rerun asks only for the rest)"
            ) from None
        finally:
            stats.requests, stats.retries = backend.requests, backend.retries
    stats.seconds = time.monotonic() - started
    log.info(
        "done: %d texts (%d cached, %d embedded) in %.1fs, %d requests, %d retries, %d tokens",
        stats.total,
        stats.cache_hits,
        stats.computed,
        stats.seconds,
        stats.requests,
        stats.retries,
        stats.tokens,
    )
    return np.stack([found[key] for key in keys]) if keys else np.zeros((0, 0), np.float32), stats


def _run(coroutine: Awaitable[None]) -> None:
    """Run a coroutine from sync code, also when the caller already has an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coroutine)  # type: ignore[arg-type]
        return
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coroutine).result()
