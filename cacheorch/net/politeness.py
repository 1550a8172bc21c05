"""Politeness towards a tile server: retries with backoff, a request-rate cap, and giving up.

Why a module of its own: how hard and how fast to hit a server is policy, not HTTP. These are
the knobs a job sets (``RetryPolicy``, ``max_rps``, ``failure_rate``) and the small state
machines behind them, kept apart from the wire protocol (:mod:`cacheorch.net.http1`) and from
the engine that applies them to every tile (:class:`cacheorch.fetch.TileFetchEngine`, which
re-exports them).
"""
from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections import deque
from dataclasses import dataclass

from cacheorch.errors import JobFailedError

__all__ = ["RetryPolicy", "TooManyFailuresError", "RateLimiter", "FailureWindow"]


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one tile: bounded retries with jittered exponential backoff.

    Transient failures (5xx, 429, timeouts, refused or reset connections, truncated bodies) are
    retried up to ``retries`` times; the n-th wait is ``backoff × 2ⁿ`` capped at ``backoff_cap``,
    with "equal jitter" (half fixed, half random) so that many workers that failed together do not
    come back together. A ``Retry-After`` on 429/503 replaces the wait, bounded by
    ``retry_after_cap`` so one server cannot park a job for hours.
    """

    retries: int = 4
    backoff: float = 0.2
    backoff_cap: float = 10.0
    retry_after_cap: float = 60.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt + 1``."""
        d = min(self.backoff_cap, self.backoff * (2.0 ** attempt))
        return d / 2 + random.uniform(0, d / 2)

    def retry_after(self, value: bytes | None, attempt: int) -> float:
        """The wait a 429/503 asks for (seconds or an HTTP date), bounded; else the backoff."""
        if value:
            text = value.decode("latin-1").strip()
            seconds: float | None = None
            if text.isdigit():
                seconds = float(text)
            else:
                try:
                    when = email.utils.parsedate_to_datetime(text)
                    seconds = when.timestamp() - time.time()
                except (TypeError, ValueError, IndexError, OverflowError):
                    seconds = None
            if seconds is not None:
                return max(0.0, min(seconds, self.retry_after_cap))
        return self.delay(attempt)


class TooManyFailuresError(JobFailedError):
    """Too many of the latest requests failed: the server is down or refusing us, and going on
    would only turn the rest of the job into failed tiles (and load on a struggling server)."""


class RateLimiter:
    """At most ``rate`` requests per second across every connection of an engine.

    A token bucket holding one token: requests are spaced ``1/rate`` apart, and a pause lets
    no burst through afterwards, which is what a server's rate limit (or a polite crawler's
    promise) counts. Used from inside the engine's event loop only.
    """

    def __init__(self, rate: float) -> None:
        if not rate > 0:
            raise ValueError("the request rate must be above 0")
        self.interval = 1.0 / rate
        self._next = 0.0

    def delay(self, now: float) -> float:
        """Reserve the next slot; the seconds to wait for it."""
        slot = max(now, self._next)
        self._next = slot + self.interval
        return slot - now

    async def wait(self) -> None:
        seconds = self.delay(time.monotonic())
        if seconds > 0:
            await asyncio.sleep(seconds)


class FailureWindow:
    """Whether more than ``rate`` of the last ``size`` requests failed.

    Every attempt counts, retries included: a server answering 503 to everything trips it
    after ``rate × size`` attempts, long before the retries of every tile are spent. Fewer
    requests than ``size`` count as what they are (10 failures of 10 trip a 0.5 × 20 window
    once failures exceed 10), so a dead server is noticed early too.
    """

    def __init__(self, rate: float, size: int) -> None:
        if not 0 <= rate < 1:
            raise ValueError("the failure rate must be at least 0 and below 1")
        if size < 1:
            raise ValueError("the failure window must hold at least one request")
        self.rate, self.size = rate, size
        self._last: deque[bool] = deque(maxlen=size)
        self.failed = 0

    def record(self, ok: bool) -> bool:
        """Count one request; True when the failures now exceed the limit."""
        if len(self._last) == self.size and not self._last[0]:
            self.failed -= 1
        self._last.append(ok)
        if not ok:
            self.failed += 1
        return self.failed > self.rate * self.size
