"""A real OpenAI-compatible embeddings server on 127.0.0.1, for tests and benchmarks.

Starlette serves ``POST /v1/embeddings`` through uvicorn in a background thread. Vectors come
from a real model (any callable texts -> matrix). Faults are scripted per request, and every
request is recorded, so tests can assert what the server saw. ``hold()`` keeps every request
waiting until ``release()``, so a test can act while a client is certainly mid-request. A
request answered after ``reset()`` (one a client gave up on) is not recorded.

With ``workers`` set it models a real self-hosted server's capacity: that many requests are
computed at once, each for ``seconds_per_text`` per text (times ``slowness``, which a test may
raise mid-run), the rest wait in a queue (answered 503 past ``queue_limit``), and a request
whose client gave up is still computed to the end, as a real server does: ``abandoned`` counts
those, and ``computed`` counts how often each text was computed. ``wait_idle()`` returns once
no request is being handled, so a test reads those counts after the last one is done.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


@dataclass
class Fault:
    """What the server does instead of (or to) a normal answer for one request."""

    status: int | None = None
    retry_after: str | None = None
    message: str = "injected fault"
    hang_seconds: float = 0.0
    drop_vector: bool = False
    nan: bool = False
    wrong_dimension: bool = False
    zero_vector: bool = False
    same_vector: bool = False  # every text gets one unit vector (a broken server)


@dataclass
class EmbeddingServer:
    vectorise: Callable[[list[str]], np.ndarray]
    api_key: str | None = None
    latency: Callable[[], float] | None = None  # seconds to wait before answering
    requests_per_minute: int | None = None  # answer 429 above this rate
    rate_window_seconds: float = 60.0  # the rate is enforced over windows this long
    faults: deque[Fault] = field(default_factory=deque)
    received: list[list[str]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    headers_seen: list[dict[str, str]] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # time.monotonic() of each request
    handled_seconds: list[float] = field(default_factory=list)  # from arrival to answer
    waiting: int = 0  # requests held at the gate now
    workers: int | None = None  # requests computed at once; None: no capacity model
    seconds_per_text: float = 0.0  # compute time per text, with ``workers``
    slowness: float = 1.0  # a multiplier of that time, which may change mid-run
    queue_limit: int | None = None  # answer 503 when this many already wait for a worker
    queued: int = 0  # requests waiting for a worker now
    abandoned: int = 0  # requests computed whose client had gone by the answer
    computed: Counter[str] = field(default_factory=Counter)  # texts computed, with repeats
    handling: int = 0  # requests being handled now
    _workers: asyncio.Semaphore | None = None
    _window: deque[float] = field(default_factory=deque)
    _generation: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.gate = threading.Event()
        self.gate.set()
        app = Starlette(routes=[Route("/v1/embeddings", self._embeddings, methods=["POST"])])
        # Bound here and handed to uvicorn, so no other process can take the port between
        # choosing it and listening on it.
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=partial(self._server.run, sockets=[self._socket]), daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> EmbeddingServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the test embedding server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until no request is being handled: a request a client gave up on is still being
        computed, and its count lands when it ends."""
        with self.idle:
            if not self.idle.wait_for(lambda: self.handling == 0, timeout):
                raise TimeoutError(f"the test server still handles {self.handling} requests")

    def reset(self) -> None:
        with self.lock:
            self._generation += 1
            self.faults.clear()
            self.received.clear()
            self.statuses.clear()
            self.headers_seen.clear()
            self.arrivals.clear()
            self.handled_seconds.clear()
            self.computed.clear()
            self.abandoned = 0
        self.release()

    def hold(self) -> None:
        """From now on every request waits (unanswered) until ``release()``."""
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    @property
    def texts_received(self) -> list[str]:
        return [text for batch in self.received for text in batch]

    def _answer(
        self, generation: int, status: int, body: dict, headers: dict[str, str] | None = None
    ) -> Response:
        with self.lock:
            if generation == self._generation:
                self.statuses.append(status)
        # json.dumps writes NaN as a bare NaN token, as some servers do.
        return Response(json.dumps(body), status, headers, media_type="application/json")

    async def _embeddings(self, request: Request) -> Response:
        with self.lock:
            self.handling += 1
        started = time.monotonic()
        try:
            return await self._handle(request)
        finally:
            with self.idle:
                self.handled_seconds.append(time.monotonic() - started)
                self.handling -= 1
                self.idle.notify_all()

    async def _handle(self, request: Request) -> Response:
        payload = await request.json()
        texts = list(payload["input"])
        with self.lock:
            generation = self._generation
            self.headers_seen.append(dict(request.headers))
            self.arrivals.append(time.monotonic())
            fault = self.faults.popleft() if self.faults else Fault()
        if not self.gate.is_set():
            with self.lock:
                self.waiting += 1
            try:
                while not self.gate.is_set():
                    await asyncio.sleep(0.02)
            finally:
                with self.lock:
                    self.waiting -= 1
        answer = partial(self._answer, generation)
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return answer(401, {"error": {"message": "Invalid API key"}})
        if self.requests_per_minute is not None:
            now = time.monotonic()
            with self.lock:
                while self._window and now - self._window[0] > self.rate_window_seconds:
                    self._window.popleft()
                allowed = self.requests_per_minute * self.rate_window_seconds / 60
                limited = len(self._window) >= allowed
                if not limited:
                    self._window.append(now)
            if limited:
                return answer(429, {"error": {"message": "rate limited"}}, {"Retry-After": "1"})
        if fault.hang_seconds:
            deadline = time.monotonic() + fault.hang_seconds
            while time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                if await request.is_disconnected():  # the client gave up: nothing is answered
                    return Response(status_code=499)
        if fault.status is not None:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
            return answer(fault.status, {"error": {"message": fault.message}}, headers)
        if self.latency is not None:
            await asyncio.sleep(self.latency())
        if self.workers is not None:
            busy = await self._compute(texts, request)
            if busy is not None:
                return answer(503, {"error": {"message": busy}}, {"Retry-After": "1"})
        vectors = await asyncio.to_thread(self.vectorise, texts)
        vectors = np.asarray(vectors, dtype=np.float32)
        if payload.get("dimensions"):  # Matryoshka, as Qwen3-Embedding's APIs do it: the
            vectors = vectors[:, : payload["dimensions"]]  # first dimensions, unit length
            vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        with self.lock:
            if generation == self._generation:
                self.received.append(texts)
        if fault.wrong_dimension:
            vectors = vectors[:, : vectors.shape[1] // 2]
        if fault.nan:
            vectors[0, 0] = np.nan
        if fault.zero_vector:
            vectors[0] = 0.0
        if fault.same_vector:
            vectors[:] = 0.0
            vectors[:, 0] = 1.0
        data = [
            {"object": "embedding", "index": index, "embedding": self._encode(vector, payload)}
            for index, vector in enumerate(vectors)
        ]
        if fault.drop_vector:
            data.pop()
        tokens = sum(len(text.split()) for text in texts)
        return answer(
            200,
            {
                "object": "list",
                "model": payload["model"],
                "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )

    async def _compute(self, texts: list[str], request: Request) -> str | None:
        """Wait for a worker and hold it for the texts' compute time; why not, if the queue
        is full. A client that has gone by then leaves a computed, unanswered request."""
        if self._workers is None:
            self._workers = asyncio.Semaphore(self.workers or 1)
        full = self.queue_limit is not None and self.queued >= self.queue_limit
        if full and self._workers.locked():
            return "server overloaded: too many requests queued"
        self.queued += 1
        try:
            await self._workers.acquire()
        finally:
            self.queued -= 1
        try:
            await asyncio.sleep(self.seconds_per_text * self.slowness * len(texts))
            with self.lock:
                self.computed.update(texts)
        finally:
            self._workers.release()
        if await request.is_disconnected():
            with self.lock:
                self.abandoned += 1
        return None

    @staticmethod
    def _encode(vector: np.ndarray, payload: dict) -> object:
        if payload.get("encoding_format") == "base64":
            return base64.b64encode(vector.astype("<f4").tobytes()).decode()
        return [float(value) for value in vector]
