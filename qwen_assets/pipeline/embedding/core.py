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
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from typing import Protocol

import duckdb
import numpy as np

from qwen_assets.errors import EmbeddingError
from qwen_assets.pipeline.checks import all_the_same
from qwen_assets.pipeline.embedding.cache import CacheUnreadableError, EmbeddingCache, prompt_key
from qwen_assets.pipeline.embedding.in_flight import Traffic
from qwen_assets.pipeline.storage import StorageError, move_aside, shown


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

    def watch(self) -> Traffic | None:
        """Count requests and retries from 0 again, for the next texts; and a fresh record
        of the requests a server meets (None: no server)."""
        ...

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
    traffic: Traffic | None = None

    def as_metadata(self) -> dict[str, object]:
        traffic = self.traffic.as_metadata() if self.traffic else {}
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
            **traffic,
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
    in_flight: int | None = None  # requests the client keeps in flight now (None: no server)
    finished: bool = False  # the last report of a task that embedded all it had to


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

    def report(self, finished: bool = False) -> None:
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
                    in_flight=self.stats.traffic.in_flight if self.stats.traffic else None,
                    finished=finished,
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
        # No speed before a second batch has arrived: said so, not as 0 texts/s.
        speed = (
            f"{rate:.1f} texts/s, about "
            f"{duration((self.to_compute - self.stats.computed) / rate)} left"
            if rate
            else "measuring speed"
        )
        traffic = self.stats.traffic
        self.log.info(
            "embedded %d/%d texts (%.0f%%), %s, %d requests%s, %d retries, %d tokens",
            self.stats.computed,
            self.to_compute,
            100 * self.stats.computed / max(self.to_compute, 1),
            speed,
            self.stats.requests,
            f" ({traffic.in_flight} in flight)" if traffic else "",
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


def check_batch(batch: Batch, vectors: np.ndarray) -> None:
    """Refuse a batch that would poison the cache (its size is checked by ``_Answers``)."""
    if vectors.ndim != 2 or vectors.shape[0] != len(batch.texts):
        rows = vectors.shape[0] if vectors.ndim >= 1 else 0
        raise EmbeddingResponseError(
            f"{batch.label}: got {rows} vectors for {len(batch.texts)} texts; nothing of it was cached"
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


# How long an answer waits for a busy cache while others arrive: it stays in memory and is
# tried again, with the full lock wait, before the run ends.
QUICK_STORE_SECONDS = 0.5


class _Answers:
    """Where each answer goes: validated, held to one vector size, and cached the moment it
    can be. The size is the one ``embedding.dimensions`` sets or the cache confirmed before;
    failing both, two answers that agree confirm it (one answer alone cannot: a wrong-size
    first batch must not become the size every later answer is held to). Answers wait in
    memory until their size is confirmed. A vector that the cache cannot take (busy, full
    disk) is kept in memory and tried again before the run ends."""

    def __init__(
        self,
        cache: EmbeddingCache,
        backend: Backend,
        dimensions: int | None,
        size: int | None,
        keys: list[str],
        found: dict[str, np.ndarray],
        stats: EmbeddingStats,
        progress: Progress,
    ) -> None:
        self.cache, self.backend, self.dimensions = cache, backend, dimensions
        self.size, self.keys, self.found = size, keys, found
        self.stats, self.progress = stats, progress
        self.held: dict[int, list[tuple[Batch, np.ndarray, int]]] = {}
        self.refused: list[EmbeddingError] = []
        self.unstored: list[tuple[list[str], np.ndarray]] = []
        self.store_error: Exception | None = None

    def __call__(self, batch: Batch, raw: np.ndarray, tokens: int) -> None:
        raw = np.asarray(raw, dtype=np.float32)
        check_batch(batch, raw if self.dimensions is None else raw[:, : self.dimensions])
        vectors = normalise(raw, self.dimensions)
        # Texts that differ only in spacing may well be one text to a tokenizer.
        different = len({" ".join(text.split()) for text in batch.texts})
        if different > 1 and all_the_same(vectors):
            # Cached, one such answer (a server's glitch) would fail the partition's check
            # on every rebuild until the instruction changed.
            raise EmbeddingResponseError(
                f"{batch.label}: one vector for {different} different texts: they did not "
                "reach the model (an instruction that fills the token limit, or a faulty "
                "server); nothing of it was cached"
            )
        width = vectors.shape[1]
        if self.size is None:
            self.held.setdefault(width, []).append((batch, vectors, tokens))
            if len(self.held[width]) >= 2:
                self.confirm(width, record=True)
        elif width != self.size:
            raise EmbeddingResponseError(
                f"{batch.label}: vectors have {width} dimensions, expected {self.size} "
                f"(the size {self.cache.model}'s answers have); nothing of it was cached"
            )
        else:
            self.keep(batch, vectors, tokens)

    def confirm(self, width: int, *, record: bool) -> None:
        """Hold every answer to ``width`` from now on; ``record``: two answers agreed on it,
        so the cache records it for every later run."""
        self.size = width
        for other, answers in sorted(self.held.items()):
            for batch, vectors, tokens in answers:
                if other == width:
                    self.keep(batch, vectors, tokens)
                else:
                    self.refused.append(
                        EmbeddingResponseError(
                            f"{batch.label}: vectors have {other} dimensions where the other "
                            f"answers have {width}; nothing of it was cached"
                        )
                    )
        self.held.clear()
        if record:
            with suppress(StorageError, duckdb.Error):  # a later run records it otherwise
                self.cache.confirm_size(width, wait_seconds=QUICK_STORE_SECONDS)

    def keep(self, batch: Batch, vectors: np.ndarray, tokens: int) -> None:
        batch_keys = [self.keys[index] for index in batch.indices]
        self.found.update(zip(batch_keys, vectors, strict=True))
        self.unstored.append((batch_keys, vectors))
        self.flush(wait_seconds=QUICK_STORE_SECONDS)
        self.stats.computed += len(batch.texts)
        self.stats.tokens += tokens
        self.stats.requests, self.stats.retries = self.backend.requests, self.backend.retries
        self.progress.update()

    def flush(self, wait_seconds: float) -> None:
        """Cache what waits to be cached; what cannot be yet stays for the next try."""
        while self.unstored:
            batch_keys, vectors = self.unstored[0]
            try:
                self.cache.store(batch_keys, vectors, wait_seconds=wait_seconds)
            except (StorageError, duckdb.Error) as error:
                self.store_error = error
                return
            self.unstored.pop(0)
        self.store_error = None

    def undecided(self) -> list[Batch]:
        """Answers of different sizes, none confirmed by a second: the batches to probe."""
        return [answers[0][0] for answers in self.held.values()] if len(self.held) > 1 else []

    def settle(self) -> None:
        """At the end: one size among the held answers is the size (nothing to compare it
        with); answers still disagreeing are refused."""
        if len(self.held) == 1:
            self.confirm(next(iter(self.held)), record=False)
        elif self.held:
            sizes = " and ".join(
                f"{width} ({answers[0][0].label})" for width, answers in sorted(self.held.items())
            )
            self.refused.append(
                EmbeddingResponseError(
                    f"answers disagree on the vector size: {sizes}, and no two agree; nothing "
                    "of them was cached: set embedding.dimensions to the model's size"
                )
            )
            self.held.clear()


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
    ``label`` names the texts in progress reports (the task). The caller holds the cache
    (``EmbeddingCache.exclusive``)."""
    started = time.monotonic()
    stats = EmbeddingStats(backend=backend.name, model=cache.model, total=len(texts))
    stats.traffic = backend.watch()
    keys = [prompt_key(prefix + text) for text in texts]
    found, size = _cached(cache, keys, dimensions, log)
    stats.cache_hits = sum(key in found for key in keys)
    missing = _missing(keys, texts, found)
    # Planning may load a model (a local backend batches by its tokens): only when needed.
    batches = backend.batches(list(missing.values()), prefix, batch_size) if missing else []
    stats.runs_on = backend.summary
    log.info(
        "%s, model %s: %d texts, %d from the cache, %d to embed",
        backend.summary,
        cache.model,
        len(texts),
        stats.cache_hits,
        len(missing),
    )
    progress = Progress(stats, log, len(missing), label)
    progress.report()
    if stats.traffic is not None:  # a new in-flight limit is shown at once, not at the next batch

        def limit_changed() -> None:
            stats.requests, stats.retries = backend.requests, backend.retries
            progress.report()

        stats.traffic.on_change = limit_changed
    answers = _Answers(cache, backend, dimensions, size, list(missing), found, stats, progress)
    failure: EmbeddingError | None = None
    try:
        if batches:
            failure = _ask(backend, batches, prefix, answers)
        for _ in range(2):  # answers of two sizes: one text again from each says which is right
            probes = [batch.part(0, 1, " (size check)") for batch in answers.undecided()]
            if not probes:
                break
            failure = _ask(backend, probes, prefix, _Votes(answers)) or failure
        answers.settle()
        wrong = [key for key in keys if key in found and len(found[key]) != answers.size]
        if answers.size is not None and wrong:  # cached by a release that kept any size
            log.info(
                "%d cached vectors have another size than %d: asking again",
                len(wrong),
                answers.size,
            )
            for key in wrong:
                del found[key]
            again = _missing(keys, texts, found)
            answers.keys = list(again)
            progress.to_compute += len(again)
            redo = backend.batches(list(again.values()), prefix, batch_size)
            failure = _ask(backend, redo, prefix, answers) or failure
    finally:
        stats.requests, stats.retries = backend.requests, backend.retries
        answers.flush(wait_seconds=cache.lock_wait_seconds)
    problem = failure or (answers.refused[0] if answers.refused else None)
    if answers.unstored:
        unsaved = sum(len(batch_keys) for batch_keys, _ in answers.unstored)
        raise EmbeddingError(
            f"{unsaved} answered vectors could not be written to the embedding cache "
            f"{shown(cache.database)} ({_first_line(answers.store_error)}); free space or close "
            f"what holds it, then rerun: the {stats.computed - unsaved} cached are kept"
        )
    if problem is not None:
        raise type(problem)(
            f"{problem} ({stats.computed} of {len(missing)} new texts were embedded and are "
            "cached; a rerun asks only for the rest)"
        ) from None
    stats.seconds = time.monotonic() - started
    progress.report(finished=True)
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


class _Votes:
    """A probe's answer votes for its size, and is otherwise not kept."""

    def __init__(self, answers: _Answers) -> None:
        self.answers = answers

    def __call__(self, batch: Batch, raw: np.ndarray, tokens: int) -> None:
        vectors = normalise(np.asarray(raw, dtype=np.float32), self.answers.dimensions)
        width = vectors.shape[1]
        if width in self.answers.held:
            self.answers.confirm(width, record=True)


def _cached(
    cache: EmbeddingCache, keys: list[str], dimensions: int | None, log: logging.Logger
) -> tuple[dict[str, np.ndarray], int | None]:
    """The cached vectors of ``keys`` and the size vectors must have (None: not known yet).
    A cache that cannot be read is moved aside, and a new one started."""
    try:
        size = dimensions or cache.confirmed_size()
        found = cache.lookup(keys)
    except CacheUnreadableError as error:
        aside = move_aside(cache.database)
        announce(log, f"{error}: moved it to {aside}; its vectors are asked for again")
        return {}, dimensions
    if size is not None:
        found = {key: vector for key, vector in found.items() if len(vector) == size}
    elif len({len(vector) for vector in found.values()}) > 1:  # unconfirmed: the most kept
        widths = Counter(len(vector) for vector in found.values())
        size = widths.most_common(1)[0][0]
        found = {key: vector for key, vector in found.items() if len(vector) == size}
    return found, size


def _missing(keys: list[str], texts: Sequence[str], found: dict[str, np.ndarray]) -> dict[str, str]:
    """Each key the cache lacks, with its text (a text listed twice is embedded once)."""
    missing: dict[str, str] = {}
    for key, text in zip(keys, texts, strict=True):
        if key not in found:
            missing.setdefault(key, text)
    return missing


def _ask(
    backend: Backend,
    batches: Sequence[Batch],
    prefix: str,
    deliver: Deliver,
) -> EmbeddingError | None:
    """Run the backend over ``batches``; the error that stopped it, if one did."""
    try:
        _run(backend.embed_batches(batches, prefix, deliver))
    except EmbeddingError as error:
        return error
    return None


def _first_line(error: BaseException | None) -> str:
    text = str(error or "").strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _run(coroutine: Awaitable[None]) -> None:
    """Run a coroutine from sync code, also when the caller already has an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coroutine)  # type: ignore[arg-type]
        return
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coroutine).result()
