"""The HTTP client against a self-hosted server of limited capacity: adaptive, and fixed.

The loopback server computes ``WORKERS`` requests at once for a time per text, queues the
rest, and computes a request to the end even when its client has given up (as llama.cpp,
TEI or Infinity on a CPU do). Scenarios, with the client's timeout scaled down to
``TIMEOUT`` seconds so each runs in under a minute: a server that keeps up; one whose answer
at 8 in flight takes 10x the timeout; one whose speed halves half way; one that answers 503
when more than a few requests queue. The client as it is (up to 8 in flight, fewer while the
server is behind, more time for a batch that timed out) beside the client as it was: a fixed
1, 2, 4 or 8 in flight and a fixed timeout, to compare with the best fixed number in hindsight.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from benchmarks.results import table, write_section
from qwen_assets.errors import EmbeddingError
from qwen_assets.pipeline.embedding.core import make_batches
from qwen_assets.pipeline.embedding.http import HttpBackend
from qwen_assets.pipeline.embedding.in_flight import InFlightLimit
from qwen_assets.settings import HttpSettings
from qwen_assets.testing.embedding_server import EmbeddingServer

WORKERS = 2
BATCH = 32
REQUESTS = 24
TIMEOUT = 1.0  # the client's, in seconds (60 s by default; scaled down with the server)
CONCURRENCIES = [1, 2, 4, 8]
# (label, seconds per text, queue limit, slows down half way)
SCENARIOS = [
    ("keeps up", 0.002, None, False),
    # At 8 in flight an answer waits for 3 others on each of 2 workers: 4 computes = 10 x TIMEOUT.
    ("10x slower than the timeout at 8 in flight", 10 * TIMEOUT / 4 / BATCH, None, False),
    ("halves its speed half way", 0.004, None, True),
    ("503 past 2 queued", 0.004, 2, False),
]


class Fixed(InFlightLimit):
    """The client before it adapted: a fixed number in flight, a fixed timeout."""

    def answered(self, seconds: float, texts: int, epoch: int) -> None:
        pass

    def behind(self, why: str, epoch: int) -> None:
        pass

    def timeout_for(self, texts: int, timeouts_before: int) -> float:
        return self.timeout_seconds


def vectorise(texts: list[str]) -> np.ndarray:
    rows = [np.random.default_rng(abs(hash(text)) % 2**32).normal(size=16) for text in texts]
    return np.asarray(rows, dtype=np.float32)


def measure(
    per_text: float, queue_limit: int | None, halves: bool, in_flight: int, adaptive: bool
) -> list:
    server = EmbeddingServer(
        vectorise, workers=WORKERS, seconds_per_text=per_text, queue_limit=queue_limit
    ).start()
    corpus = [f"slow server text {number}" for number in range(REQUESTS * BATCH)]
    settings = HttpSettings(
        base_url=server.base_url, max_in_flight=in_flight, timeout_seconds=TIMEOUT
    )
    backend = HttpBackend(settings, "bench", None, None, logging.getLogger("bench"))
    if not adaptive:
        backend.in_flight = Fixed(in_flight, TIMEOUT, say=lambda line: None)
    done = 0

    def deliver(batch, vectors, tokens) -> None:
        nonlocal done
        done += len(batch.texts)
        if halves and done >= len(corpus) // 2:
            server.slowness = 2.0

    started = time.monotonic()
    try:
        asyncio.run(backend.embed_batches(make_batches(corpus, BATCH), "", deliver))
        outcome = "completed"
    except EmbeddingError as error:
        outcome = f"failed ({done} of {len(corpus)} texts): {str(error)[:60]}…"
    seconds = time.monotonic() - started
    time.sleep(TIMEOUT * 3)  # what the server still computes for requests given up on
    with server.lock:
        twice = sum(count - 1 for count in server.computed.values() if count > 1)
        abandoned = server.abandoned
        rejected = server.statuses.count(503)
    server.stop()
    return [
        f"up to {in_flight}, adaptive" if adaptive else f"fixed {in_flight}",
        outcome,
        f"{seconds:.1f}",
        f"{done / seconds:.0f}",
        backend.requests,
        abandoned,
        rejected,
        twice,
    ]


def run() -> str:
    rows = []
    for label, per_text, queue_limit, halves in SCENARIOS:
        for in_flight in CONCURRENCIES:
            rows.append([label, *measure(per_text, queue_limit, halves, in_flight, False)])
        rows.append([label, *measure(per_text, queue_limit, halves, 8, True)])
    body = (
        f"{REQUESTS} requests of {BATCH} texts; the server computes {WORKERS} at once, the client "
        f"times out after {TIMEOUT:g} s and tries a batch up to 6 times (its defaults, with the "
        f"timeout scaled down). *Abandoned*: requests the server computed after the client had "
        f"given up on them; *twice*: texts computed more than once.\n\n"
        + table(
            [
                "server",
                "client",
                "outcome",
                "seconds",
                "texts/s",
                "requests sent",
                "abandoned",
                "503s",
                "twice",
            ],
            rows,
        )
    )
    write_section("slow-server", "A server of limited capacity", body)
    return body


if __name__ == "__main__":
    print(run())
