"""How many requests the HTTP client keeps in flight: as many as the server sustains.

Additive increase, multiplicative decrease, as TCP paces itself: the limit starts at
``embedding.http.max_in_flight``, halves when the server shows it is behind (a request timed
out, a 429 or a 5xx, or answers taking well over the fastest seen), and grows by one after a
window of answers that came back as fast as ever. One burst of trouble halves it once: a
request sent before the last decrease says nothing new about the decreased limit. Written
here because no maintained Python library does this for an asyncio client (Netflix's
concurrency-limits is Java); it is small and has no state beyond one build's requests.

A retry waits for a free place like any request, so retries never stack on a server that is
already behind; and the time a request may take grows with the answers seen, so a slow
server makes the build slower rather than failing it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field

DECREASE = 0.5
# Answers this many times slower per text than the fastest seen: the server is queueing them.
SLOW = 2.5
# An answer within this share of the client's timeout is never a sign of trouble, however it
# compares with the fastest (jitter on a fast API is not a queue).
QUIET_SHARE = 0.1
# A request may take this many times the usual time per text before it is given up.
PATIENCE = 4.0


@dataclass
class InFlightLimit:
    most: int
    timeout_seconds: float
    say: Callable[[str], None]
    limit: float = field(init=False)
    in_flight: int = 0
    epoch: int = 0  # bumped by each decrease
    fastest: float | None = None  # seconds per text
    usual: float | None = None  # seconds per text, smoothed
    good_answers: int = 0  # since the last change
    _free: asyncio.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.limit = float(self.most)
        self._free = asyncio.Condition()

    @property
    def allowed(self) -> int:
        return max(1, min(self.most, math.floor(self.limit)))

    def bind(self) -> None:
        """A fresh place to wait, for a new event loop: each call of the backend runs in one
        of its own, and an asyncio condition belongs to the loop that first waited on it."""
        self._free = asyncio.Condition()
        self.in_flight = 0

    async def acquire(self) -> int:
        """Wait for a place; the epoch the request is sent in."""
        async with self._free:
            await self._free.wait_for(lambda: self.in_flight < self.allowed)
            self.in_flight += 1
        return self.epoch

    async def release(self) -> None:
        async with self._free:
            self.in_flight -= 1
            self._free.notify_all()

    def timeout_for(self, texts: int, timeouts_before: int) -> float:
        """How long this request may take: the client's timeout, or more where answers have
        been slower than that; doubled for each time this batch timed out already."""
        usual = (self.usual or 0.0) * texts * PATIENCE
        return max(self.timeout_seconds, usual) * 2**timeouts_before

    def answered(self, seconds: float, texts: int, epoch: int) -> None:
        per_text = seconds / max(1, texts)
        self.fastest = per_text if self.fastest is None else min(self.fastest, per_text)
        self.usual = per_text if self.usual is None else 0.8 * self.usual + 0.2 * per_text
        queued = seconds > QUIET_SHARE * self.timeout_seconds and per_text > SLOW * self.fastest
        if queued:
            self.behind(f"answers {per_text / self.fastest:.1f}x slower than the fastest", epoch)
            return
        if epoch != self.epoch:
            return
        self.good_answers += 1
        if self.good_answers >= self.allowed and self.allowed < self.most:
            self.limit += 1
            self.good_answers = 0

    def behind(self, why: str, epoch: int) -> None:
        """The server is behind: fewer in flight, once per burst."""
        if epoch != self.epoch:
            return
        before = self.allowed
        self.limit = max(1.0, self.limit * DECREASE)
        self.epoch += 1
        self.good_answers = 0
        if self.allowed != before:
            self.say(f"server slowing: {before} → {self.allowed} in flight ({why})")
