"""An OpenAI-compatible ``/v1/embeddings`` client: SiliconFlow by default, or any vLLM, TEI,
Infinity, Ollama or llama.cpp server.

Batches flow through in-flight slots as a continuous pipeline (a slot takes the next batch
the moment it is free), as many at once as the server sustains (:mod:`.in_flight`: at most
``max_in_flight``, fewer while the server is behind), under a client-side requests-per-minute
limit (aiolimiter) and optional tokens-per-minute limit. Retries use tenacity: exponential
backoff with jitter, honouring ``Retry-After``; a retry waits for a free place, and a batch
that timed out gets twice the time on its next try. A server that is behind (timeouts, 429,
502-504) is waited for as long as it answers something within ``patience_seconds``; one that
is absent or fails a request outright gets ``max_attempts`` tries. The first batch is sent
alone, so a wrong key or model fails in one request rather than after many.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_random_exponential,
)

from qwen_assets.pipeline.embedding.core import (
    Batch,
    Deliver,
    EmbeddingConfigError,
    EmbeddingError,
    EmbeddingResponseError,
    announce,
    duration,
    make_batches,
)
from qwen_assets.pipeline.embedding.in_flight import AT_THE_EDGE, InFlightLimit, Traffic
from qwen_assets.pipeline.redaction import redact_credentials, redact_secrets
from qwen_assets.settings import HttpSettings

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504}) | frozenset(range(505, 600))
# A server answering these is there but behind: waiting helps, however long it takes.
BEHIND_STATUSES = frozenset({408, 429, 502, 503, 504})
TOO_LARGE_WORDS = ("too large", "too long", "batch size", "too many", "maximum")
MAX_RETRY_AFTER_SECONDS = 120.0
SAID_WAIT_SECONDS = 10.0  # a wait this long is said on the command line, not only logged
CHARS_PER_TOKEN = 4  # a rough estimate, only for the optional tokens-per-minute limit
# The share of requests_per_minute the client sends: a request delayed on its way must not
# land in the same window of the server's count as the next one.
RATE_MARGIN = 0.98
# Batches waiting, their requests built, for a place in flight: while a finished request's
# answer is parsed and cached, the place it freed is already taken.
SPARE_SLOTS = 2


class RetryableStatus(EmbeddingError):
    def __init__(self, status: int, retry_after: float | None, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.retry_after = retry_after


class BatchTooLarge(EmbeddingError):
    pass


def is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds, from either of its two forms."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


# What a 400 says when the model is the problem (any other 400 is reported as it is).
UNKNOWN_MODEL = re.compile(
    r"(?i)model[\s_-]*not[\s_-]*found|(unknown|invalid|unsupported|no such) model|"
    r"model\b.{0,80}\b(does not exist|doesn't exist|not exist|not supported|not available)"
)


class HttpBackend:
    name = "http"

    def __init__(
        self,
        settings: HttpSettings,
        model: str,
        dimensions: int | None,
        api_key: str | None,
        log: logging.Logger,
    ) -> None:
        self.settings = settings
        self.model = model
        self.dimensions = dimensions
        self.log = log
        self._api_key = api_key or None
        self.requests = 0
        self.retries = 0
        self.summary = f"http backend, {httpx.URL(settings.base_url).host}"
        self.shown_url = redact_credentials(settings.base_url)
        if self._api_key is None and not is_loopback(settings.base_url):
            raise EmbeddingConfigError(
                f"the HTTP backend needs an API key for {self.shown_url}: set the environment "
                f"variable {settings.api_key_env} (embedding.http.api_key_env), "
                'or use embedding.backend = "local"'
            )
        self._bind_limiters()
        self.pace = InFlightLimit(
            settings.max_in_flight,
            settings.timeout_seconds,
            say=lambda line: announce(log, line),
            log=lambda line: log.info("%s", line),
        )
        self.last_answer = time.monotonic()  # any answer: the server is making progress
        self._halted = False  # a batch failed: nothing more is sent

    def _bind_limiters(self) -> None:
        """Budgets for the event loop about to run (each call of ``embed_batches`` runs in
        one of its own, and an aiolimiter limiter belongs to one loop)."""
        rpm = self.settings.requests_per_minute * RATE_MARGIN
        # One request every 60/rpm seconds: evenly spaced, so no opening burst trips a
        # server that counts its limit over short windows.
        self._requests = AsyncLimiter(1, 60 / rpm)
        tpm = self.settings.tokens_per_minute
        self._tokens = AsyncLimiter(tpm, 60.0) if tpm else None

    def watch(self) -> Traffic:
        self.requests = self.retries = 0
        return self.pace.watch()

    def batches(self, texts: Sequence[str], prefix: str, batch_size: int) -> list[Batch]:
        return make_batches(texts, batch_size)

    def _redact(self, text: str) -> str:
        """What the server or the client library says, with no key in it (a server may echo
        the key, or a near-copy of it, and a URL may carry one)."""
        return redact_secrets(text, self._api_key)

    async def embed_batches(self, batches: Sequence[Batch], prefix: str, deliver: Deliver) -> None:
        self.pace.bind()
        self._bind_limiters()
        self._halted = False
        self.last_answer = time.monotonic()
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        limits = httpx.Limits(
            max_connections=self.settings.max_in_flight,
            max_keepalive_connections=self.settings.max_in_flight,
        )
        # A user and password written into the URL go as basic auth, not in the URL, so no
        # log line of httpx's (which names each URL it requests) carries them.
        url = httpx.URL(self.settings.base_url)
        auth = httpx.BasicAuth(url.username, url.password) if url.userinfo else None
        async with httpx.AsyncClient(
            base_url=url.copy_with(userinfo=b""),
            auth=auth if not headers else None,
            headers=headers,
            timeout=httpx.Timeout(self.settings.timeout_seconds),
            limits=limits,
        ) as client:
            queue = list(batches)
            if not queue:
                return
            await self._send(client, queue.pop(0), prefix, deliver)  # fail fast on key or model
            pending: asyncio.Queue[Batch] = asyncio.Queue()
            for batch in queue:
                pending.put_nowait(batch)

            failed: list[EmbeddingError] = []

            async def slot() -> None:
                # A failed batch stops new requests, also of batches waiting for a place;
                # the ones in flight are paid for, so their answers are still delivered (and
                # cached) before the error is raised.
                while not failed:
                    try:
                        batch = pending.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    try:
                        await self._send(client, batch, prefix, deliver)
                    except EmbeddingError as error:
                        failed.append(error)
                        self._halted = True

            try:
                async with asyncio.TaskGroup() as group:
                    for _ in range(min(self.settings.max_in_flight + SPARE_SLOTS, len(queue))):
                        group.create_task(slot())
            except BaseExceptionGroup as errors:  # the first slot's error is the batch's error
                raise errors.exceptions[0] from None
            if failed:
                raise failed[0]

    async def _send(
        self, client: httpx.AsyncClient, batch: Batch, prefix: str, deliver: Deliver
    ) -> None:
        try:
            answer = await self._with_retries(client, batch, prefix)
        except BatchTooLarge:
            if len(batch.texts) == 1:
                raise EmbeddingError(
                    f"{batch.label}: the server refuses even a single text as too large"
                ) from None
            self.log.info("%s was too large for the server: splitting it in two", batch.label)
            for half in batch.halves():
                await self._send(client, half, prefix, deliver)
            return
        if answer is not None:  # None: halted before it was sent
            deliver(batch, *answer)

    async def _with_retries(
        self, client: httpx.AsyncClient, batch: Batch, prefix: str
    ) -> tuple[np.ndarray, int] | None:
        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            if isinstance(error, RetryableStatus) and error.retry_after is not None:
                seconds = min(error.retry_after, MAX_RETRY_AFTER_SECONDS)
                if seconds >= SAID_WAIT_SECONDS:  # a long silence needs saying where people look
                    capped = ", the most this client waits" if error.retry_after > seconds else ""
                    announce(
                        self.log,
                        f"{batch.label}: the server asks to wait {error.retry_after:g}s "
                        f"(HTTP {error.status}, Retry-After); waiting {seconds:g}s{capped}",
                    )
                return seconds
            return wait_random_exponential(multiplier=0.5, max=30)(state)

        timeouts = 0  # of this batch: each gives its next try twice the time

        def before_sleep(state: RetryCallState) -> None:
            nonlocal timeouts
            self.retries += 1
            error = state.outcome.exception() if state.outcome else None
            timeouts += isinstance(error, httpx.TimeoutException)
            self.log.warning(
                "%s: %s; retry %d in %.1fs",
                batch.label,
                self._redact(str(error) or type(error).__name__),
                state.attempt_number,
                state.upcoming_sleep,
            )

        attempts = 0

        def stop(state: RetryCallState) -> bool:
            nonlocal attempts
            attempts = state.attempt_number
            if attempts < self.settings.max_attempts:
                return False
            error = state.outcome.exception() if state.outcome else None
            return not waiting_helps(error) or self._quiet() >= self.settings.patience_seconds

        retrying = AsyncRetrying(
            retry=retry_if_exception(
                lambda error: isinstance(
                    error, RetryableStatus | httpx.TimeoutException | httpx.TransportError
                )
            ),
            wait=wait,
            stop=stop,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._post(client, batch, prefix, timeouts)
        except (RetryableStatus, httpx.TimeoutException, httpx.TransportError) as error:
            last = (
                str(error)
                if isinstance(error, RetryableStatus)
                else f"{type(error).__name__} talking to {self.shown_url}"
            )
            waited = (
                f", with no batch answered for {duration(self._quiet())} "
                f"(embedding.http.patience_seconds = {self.settings.patience_seconds:g})"
                if waiting_helps(error)
                else ""
            )
            raise EmbeddingError(
                f"{batch.label}: gave up after {attempts} attempts{waited}, last {last}"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _quiet(self) -> float:
        """Seconds since the server last answered anything."""
        return time.monotonic() - self.last_answer

    async def _post(
        self, client: httpx.AsyncClient, batch: Batch, prefix: str, timeouts: int = 0
    ) -> tuple[np.ndarray, int] | None:
        body: dict[str, Any] = {
            "model": self.model,
            "input": [prefix + text for text in batch.texts],
            "encoding_format": self.settings.encoding_format,
        }
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        if self._tokens is not None:
            estimate = sum(len(text) for text in body["input"]) // CHARS_PER_TOKEN + 1
            await self._tokens.acquire(min(estimate, self.settings.tokens_per_minute or estimate))
        limit = self.pace
        epoch = await limit.acquire()
        if self._halted:  # another batch failed while this one waited: it is not sent
            await limit.release()
            return None
        # However slow the server, one request never outwaits the build's patience.
        patience = max(self.settings.timeout_seconds, self.settings.patience_seconds)
        timeout = min(limit.timeout_for(len(batch.texts), timeouts), patience)
        try:
            async with self._requests:
                self.requests += 1
                sent = time.monotonic()
                response = await client.post("/embeddings", json=body, timeout=timeout)
        except httpx.TimeoutException:
            limit.traffic.timeouts += 1
            limit.behind(f"a request timed out after {timeout:.3g}s", epoch)
            raise
        finally:
            await limit.release()
        if response.status_code in RETRY_STATUSES:
            limit.behind(f"HTTP {response.status_code}", epoch, AT_THE_EDGE)
        elif response.status_code < 400:
            self.last_answer = time.monotonic()
            limit.answered(self.last_answer - sent, len(batch.texts), epoch)
        if response.status_code >= 400:
            self._raise_for_status(response, batch)
        return self._parse(response, batch)

    def _raise_for_status(self, response: httpx.Response, batch: Batch) -> None:
        status = response.status_code
        detail = self._redact(_error_detail(response))
        if status in RETRY_STATUSES:
            raise RetryableStatus(
                status, retry_after_seconds(response.headers.get("Retry-After")), detail
            )
        if status == 413 or (
            status == 400 and any(word in detail.lower() for word in TOO_LARGE_WORDS)
        ):
            raise BatchTooLarge(detail)
        if status in (401, 403):
            raise EmbeddingConfigError(
                f"{self.shown_url} refused the API key from {self.settings.api_key_env} "
                f"(HTTP {status}): check the key and its permissions"
            )
        if status == 404 or (status == 400 and UNKNOWN_MODEL.search(detail)):
            raise EmbeddingConfigError(
                f"{self.shown_url} does not serve the model {self.model!r} "
                f"(HTTP {status}: {detail}): check embedding.model and embedding.http.base_url"
            )
        raise EmbeddingError(f"{batch.label}: HTTP {status} from {self.shown_url}: {detail}")

    def _parse(self, response: httpx.Response, batch: Batch) -> tuple[np.ndarray, int]:
        try:
            payload = response.json()
            items = payload["data"]
            indices = [int(item["index"]) for item in items]
            vectors = [self._vector(item["embedding"]) for item in items]
        except (ValueError, KeyError, TypeError) as error:
            raise EmbeddingResponseError(
                f"{batch.label}: the response is not an embeddings list ({type(error).__name__}: "
                f"{self._redact(str(error))[:200]}); nothing of it was cached"
            ) from None
        if sorted(indices) != list(range(len(batch.texts))):
            raise EmbeddingResponseError(
                f"{batch.label}: the response holds indices {_summarise(indices)} for "
                f"{len(batch.texts)} texts (each of 0..{len(batch.texts) - 1} once is required); "
                "nothing of it was cached"
            )
        if len({len(vector) for vector in vectors}) != 1:
            raise EmbeddingResponseError(
                f"{batch.label}: vectors of different lengths in one response; nothing of it was cached"
            )
        matrix = np.empty((len(vectors), len(vectors[0])), dtype=np.float32)
        for index, vector in zip(indices, vectors, strict=True):
            matrix[index] = vector
        usage = payload.get("usage") or {}
        tokens = int(usage.get("total_tokens") or usage.get("prompt_tokens") or 0)
        return matrix, tokens

    def _vector(self, value: Any) -> np.ndarray:
        if isinstance(value, str):  # encoding_format = "base64": little-endian float32
            return np.frombuffer(base64.b64decode(value), dtype="<f4")
        return np.asarray(value, dtype=np.float32)


def waiting_helps(error: BaseException | None) -> bool:
    """A server that is behind (a timeout, 429, 502-504, a dropped connection) answers if
    waited for; one that is absent (nothing listening) or fails this request outright (500)
    does not."""
    if isinstance(error, RetryableStatus):
        return error.status in BEHIND_STATUSES
    if isinstance(error, httpx.ConnectError):
        return False
    return isinstance(error, httpx.TimeoutException | httpx.TransportError)


def _error_detail(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict):
            return str(error.get("message") or error)[:300]
        return str(error)[:300]
    return str(payload)[:300]


def _summarise(indices: list[int]) -> str:
    return str(sorted(indices)) if len(indices) <= 8 else f"{len(indices)} indices"
