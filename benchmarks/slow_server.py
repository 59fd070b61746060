"""The HTTP client against a self-hosted server of limited capacity: adaptive, and fixed.

The loopback server computes ``WORKERS`` requests at once for a time per text, queues the
rest, and computes a request to the end even when its client has given up (as llama.cpp,
TEI or Infinity on a CPU do). Scenarios, with the client's timeout scaled down to
``TIMEOUT`` seconds so each runs in about a minute or less: a server that keeps up; one whose
answer at 8 in flight takes 10x the timeout; one whose speed halves half way; one that
answers 503 when more than a few requests queue.

Clients: the client as it is (up to 8 in flight, fewer while the server is behind); the
same client held at a fixed 1, 2, 4 or 8 in flight (its timeouts and patience unchanged), to
compare with the best fixed number chosen in hindsight; and the client as it was before it
adapted (a fixed 8 in flight, a fixed timeout, 6 tries).
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
TIMEOUT = 1.0  # the client's, in seconds (60 s by default; scaled down with the server)
CONCURRENCIES = [1, 2, 4, 8]
# (label, requests of BATCH texts, seconds per text, queue limit, slows down half way)
SCENARIOS = [
    ("keeps up", 200, 0.002, None, False),
    # At 8 in flight an answer waits for 3 others on each of 2 workers: 4 computes = 10 x TIMEOUT.
    ("10x slower than the timeout at 8 in flight", 24, 10 * TIMEOUT / 4 / BATCH, None, False),
    ("halves its speed half way", 100, 0.004, None, True),
    ("503 past 2 queued", 100, 0.004, 2, False),
]


class Fixed(InFlightLimit):
    """A fixed number in flight: the client's own timeouts, never fewer requests."""

    def follow(self, seconds: float, per_text: float, epoch: int) -> None:
        pass

    def behind(self, why: str, epoch: int, share: float = 0.0, said: bool = True) -> None:
        pass


class AsBefore(Fixed):
    """The client before it adapted: a fixed number in flight and a fixed timeout."""

    def timeout_for(self, texts: int, timeouts_before: int) -> float:
        return self.timeout_seconds


def vectorise(texts: list[str]) -> np.ndarray:
    rows = [np.random.default_rng(abs(hash(text)) % 2**32).normal(size=16) for text in texts]
    return np.asarray(rows, dtype=np.float32)


def measure(
    requests: int,
    per_text: float,
    queue_limit: int | None,
    halves: bool,
    client: str,
    in_flight: int,
) -> list:
    server = EmbeddingServer(
        vectorise, workers=WORKERS, seconds_per_text=per_text, queue_limit=queue_limit
    ).start()
    corpus = [f"slow server text {number}" for number in range(requests * BATCH)]
    settings = HttpSettings(
        base_url=server.base_url,
        max_in_flight=in_flight,
        timeout_seconds=TIMEOUT,
        patience_seconds=0 if client == "as before" else 3600,
    )
    backend = HttpBackend(settings, "bench", None, None, logging.getLogger("bench"))
    kind = {"fixed": Fixed, "as before": AsBefore}.get(client)
    if kind is not None:
        backend.pace = kind(in_flight, TIMEOUT, say=lambda line: None)
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
        outcome = f"failed ({done} of {len(corpus)} texts): {str(error)[:50]}…"
    seconds = time.monotonic() - started
    server.wait_idle(timeout=600)  # what the server still computes for requests given up on
    with server.lock:
        twice = sum(count - 1 for count in server.computed.values() if count > 1)
        abandoned = server.abandoned
        rejected = server.statuses.count(503)
    server.stop()
    traffic = backend.pace.traffic.as_metadata()
    return [
        {"adaptive": f"up to {in_flight}, adaptive", "fixed": f"fixed {in_flight}"}.get(
            client, f"fixed {in_flight}, as before"
        ),
        outcome,
        f"{seconds:.1f}",
        done / seconds,
        backend.requests,
        abandoned,
        rejected,
        twice,
        traffic.get("latency_p50_seconds", ""),
        traffic.get("latency_p95_seconds", ""),
        traffic["in_flight_limits"] if client == "adaptive" else "",
    ]


def run() -> str:
    rows = []
    for label, requests, per_text, queue_limit, halves in SCENARIOS:
        args = (requests, per_text, queue_limit, halves)
        scenario = [measure(*args, "fixed", in_flight) for in_flight in CONCURRENCIES]
        scenario.append(measure(*args, "as before", 8))
        adaptive = measure(*args, "adaptive", 8)
        best = max(row[3] for row in scenario if row[1] == "completed")
        for row in [*scenario, adaptive]:
            row[3] = f"{row[3]:.0f}" + (
                f" ({row[3] / best:.0%} of best fixed)" if row is adaptive else ""
            )
            rows.append([f"{label} ({requests} requests)", *row])
    body = (
        f"Requests of {BATCH} texts; the server computes {WORKERS} at once, the client times "
        f"out after {TIMEOUT:g} s (its default is 60 s: the server and the timeout are scaled "
        f"down together). *Abandoned*: requests the server computed after the client had "
        f"given up on them; *twice*: texts computed more than once; latencies are the "
        f"client's, of answered requests; *in flight*: the adaptive client's limit as it "
        f"changed.\n\n"
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
                "p50 s",
                "p95 s",
                "in flight",
            ],
            rows,
        )
    )
    write_section("slow-server", "A server of limited capacity", body)
    return body


if __name__ == "__main__":
    print(run())
