"""HTTP embedding throughput against a loopback server with real latency and a rate limit.

The server answers after a jittered 150-400 ms and returns 429 (Retry-After: 1) above its
requests-per-minute budget. Vectors are a cheap hash of the text: what is measured is the
client, not a model. Compared with the theoretical bound
min(RPM / 60 x batch, in-flight x batch / mean latency), the latency as the server measured
it (its wait and its own work, which shares this process), and with a baseline that sends
fixed groups of 10 concurrent requests and waits for the slowest before the next group.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from functools import partial

import httpx
import numpy as np

from benchmarks.results import table, write_section
from qwen_assets.pipeline.embedding.core import make_batches
from qwen_assets.pipeline.embedding.http import HttpBackend
from qwen_assets.settings import HttpSettings
from qwen_assets.testing.embedding_server import EmbeddingServer

LATENCY = (0.150, 0.400)
BATCH = 32
IN_FLIGHT = 10
BASELINE_GROUP = 10
DIMENSION = 64
# (label, server requests per minute, texts); the server enforces its rate over 2 s windows,
# so the limit bites within a short run as it would over a long one.
SCENARIOS = [
    ("latency-bound (RPM 6,000)", 6000, 48000),
    ("rate-bound (RPM 900)", 900, 16000),
]


def vectorise(texts: list[str]) -> np.ndarray:
    rows = [np.random.default_rng(abs(hash(text)) % 2**32).normal(size=DIMENSION) for text in texts]
    return np.asarray(rows, dtype=np.float32)


def texts(count: int) -> list[str]:
    return [f"benchmark text {number} " + "word " * (number % 50) for number in range(count)]


def ours(server: EmbeddingServer, *, rpm: int, corpus: list[str]) -> tuple[float, int]:
    settings = HttpSettings(
        base_url=server.base_url, max_in_flight=IN_FLIGHT, requests_per_minute=rpm, max_attempts=10
    )
    backend = HttpBackend(settings, "bench", None, None, logging.getLogger("bench"))
    done = 0

    def deliver(batch, vectors, tokens) -> None:
        nonlocal done
        done += len(batch.texts)

    started = time.monotonic()
    asyncio.run(backend.embed_batches(make_batches(corpus, BATCH), "", deliver))
    assert done == len(corpus)
    return time.monotonic() - started, backend.retries


def baseline(server: EmbeddingServer, *, corpus: list[str]) -> tuple[float, int]:
    """Groups of 10 concurrent requests; each group waits for its slowest; 429 -> sleep 1 s."""
    retries = 0

    async def send(client: httpx.AsyncClient, chunk: list[str]) -> None:
        nonlocal retries
        while True:
            response = await client.post("/embeddings", json={"model": "bench", "input": chunk})
            if response.status_code != 429:
                response.raise_for_status()
                return
            retries += 1
            await asyncio.sleep(float(response.headers.get("retry-after", "1")))

    async def main() -> None:
        chunks = [corpus[start : start + BATCH] for start in range(0, len(corpus), BATCH)]
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            for start in range(0, len(chunks), BASELINE_GROUP):
                await asyncio.gather(
                    *(send(client, c) for c in chunks[start : start + BASELINE_GROUP])
                )

    started = time.monotonic()
    asyncio.run(main())
    return time.monotonic() - started, retries


def run() -> str:
    rows = []
    for label, rpm, count in SCENARIOS:
        corpus = texts(count)
        figures = {}
        handled: list[float] = []
        measures = {
            "ours": partial(ours, rpm=rpm, corpus=corpus),
            "baseline": partial(baseline, corpus=corpus),
        }
        for name, measure in measures.items():
            server = EmbeddingServer(
                vectorise,
                latency=lambda: random.uniform(*LATENCY),
                requests_per_minute=rpm,
                rate_window_seconds=2.0,
            ).start()
            try:
                seconds, retries = measure(server)
            finally:
                server.stop()
            figures[name] = (count / seconds, retries)
            if name == "ours":
                handled = server.handled_seconds
        # The latency as the server measured it: its wait, and its own work on each request.
        bound = min(rpm / 60 * BATCH, IN_FLIGHT * BATCH / float(np.mean(handled)))
        rows.append(
            [
                label,
                f"{bound:.0f}",
                f"{figures['ours'][0]:.0f} ({figures['ours'][0] / bound:.0%})",
                f"{figures['ours'][1]}",
                f"{figures['baseline'][0]:.0f} ({figures['baseline'][0] / bound:.0%})",
                f"{figures['baseline'][1]}",
                f"{figures['ours'][0] / figures['baseline'][0]:.2f}x",
            ]
        )
    body = (
        f"Batch {BATCH} texts, {IN_FLIGHT} requests in flight, server latency uniform "
        f"{LATENCY[0] * 1000:.0f}-{LATENCY[1] * 1000:.0f} ms plus its own work (the bound uses "
        f"the mean it measured), 429 above the server's rate.\n\n"
        + table(
            [
                "scenario",
                "bound texts/s",
                "ours texts/s",
                "ours 429s",
                "baseline texts/s",
                "baseline 429s",
                "ours / baseline",
            ],
            rows,
        )
    )
    write_section("http", "HTTP embedding throughput", body)
    return body


if __name__ == "__main__":
    print(run())
