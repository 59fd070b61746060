"""How many requests the HTTP client keeps in flight: as many as the server sustains.

Additive increase, multiplicative decrease, as TCP paces itself: the limit starts at
``embedding.http.max_in_flight``, falls when the server shows it is behind, and grows by one
after a window of answers that came back as fast as before. A timed-out request halves it; a
429 or 5xx, or answers queueing (well over the fastest of the recent ones), take it to 0.7 of
itself, as TCP CUBIC does: the server is at its edge, not far past it. One burst of trouble
lowers it once: a request sent before the last decrease says nothing new about the decreased
limit. "Fastest" is of the recent answers only, so a server that settles at a slower speed
becomes the new norm instead of a reason to keep falling. Written here because no
maintained Python library does this for an asyncio client (Netflix's concurrency-limits is
Java); it is small and has no state beyond one build's requests.

A retry waits for a free place like any request, so retries never stack on a server that is
already behind; and the time a request may take grows with the answers seen, so a slow
server makes the build slower rather than failing it. What the requests met (the limits
used, the latencies, the timeouts) is kept per task in :class:`Traffic`, for the task's
metadata and the progress line.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

TIMED_OUT = 0.5  # the limit's share left after a timeout
AT_THE_EDGE = 0.7  # after a 429 or 5xx, or answers queueing
# Answers this many times slower per text than the fastest recent one: the server queues them.
SLOW = 2.5
RECENT = 16  # answers the fastest is taken from
# An answer within this share of the client's timeout is never a sign of trouble, however it
# compares with the fastest (jitter on a fast API is not a queue).
QUIET_SHARE = 0.1
# A request may take this many times the usual time per text before it is given up.
PATIENCE = 4.0


@dataclass
class Traffic:
    """One task's requests as the server met them."""

    limits: list[int]  # the in-flight limit at the start, then after each change
    latencies: list[float] = field(default_factory=list)  # seconds, of each answer
    timeouts: int = 0  # requests given up on (a server may still be computing them)
    on_change: Callable[[], None] = field(default=lambda: None, repr=False, compare=False)

    @property
    def in_flight(self) -> int:
        return self.limits[-1]

    def as_metadata(self) -> dict[str, object]:
        shown = [str(limit) for limit in self.limits]
        if len(shown) > 12:  # a long back-and-forth: its ends, and how many changes between
            shown = [*shown[:5], f"… ({len(shown) - 10} more) …", *shown[-5:]]
        metadata: dict[str, object] = {
            "in_flight_limits": " → ".join(shown),
            "timeouts": self.timeouts,
        }
        if self.latencies:
            p50, p95 = (round(float(value), 3) for value in np.percentile(self.latencies, [50, 95]))
            metadata |= {"latency_p50_seconds": p50, "latency_p95_seconds": p95}
        return metadata


@dataclass
class InFlightLimit:
    most: int
    timeout_seconds: float
    say: Callable[[str], None]  # a line for people: the server slowing down the build
    log: Callable[[str], None] = lambda line: None  # every other change, for the run's log
    limit: float = field(init=False)
    in_flight: int = 0
    epoch: int = 0  # bumped by each decrease
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT))  # s per text
    usual: float | None = None  # seconds per text, smoothed
    good_answers: int = 0  # since the last change
    traffic: Traffic = field(init=False)
    _free: asyncio.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.limit = float(self.most)
        self._free = asyncio.Condition()
        self.watch()

    def watch(self) -> Traffic:
        """A fresh record, for the next task's requests."""
        self.traffic = Traffic(limits=[self.allowed])
        return self.traffic

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
        self.traffic.latencies.append(seconds)
        per_text = seconds / max(1, texts)
        self.recent.append(per_text)
        self.usual = per_text if self.usual is None else 0.8 * self.usual + 0.2 * per_text
        self.follow(seconds, per_text, epoch)

    def follow(self, seconds: float, per_text: float, epoch: int) -> None:
        """One more in flight after a window of good answers; fewer when answers queue."""
        fastest = min(self.recent)
        queued = seconds > QUIET_SHARE * self.timeout_seconds and per_text > SLOW * fastest
        if queued:
            why = f"answers {per_text / fastest:.1f}x slower than the fastest recent one"
            self.behind(why, epoch, AT_THE_EDGE, said=False)
            return
        if epoch != self.epoch:
            return
        self.good_answers += 1
        if self.good_answers >= self.allowed and self.allowed < self.most:
            self.limit += 1
            self.good_answers = 0
            self._changed()
            self.log(f"server keeping up: {self.allowed} in flight")

    def behind(self, why: str, epoch: int, share: float = TIMED_OUT, said: bool = True) -> None:
        """The server is behind: ``share`` of the requests in flight, once per burst. A
        timeout or an error status is said where people look; answers queueing (which a
        server that computes few at once shows all the time) only in the run's log."""
        if epoch != self.epoch:
            return
        before = self.allowed
        self.limit = max(1.0, self.limit * share)
        self.epoch += 1
        self.good_answers = 0
        if self.allowed != before:
            self._changed()
            line = f"server slowing: {before} → {self.allowed} in flight ({why})"
            (self.say if said else self.log)(line)

    def _changed(self) -> None:
        if self.traffic.limits[-1] != self.allowed:
            self.traffic.limits.append(self.allowed)
            self.traffic.on_change()
