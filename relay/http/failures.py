"""Recent failures per client (an IP, an email), counted for lockouts.

Failures are kept for ``window_s``; once a key has ``limit`` of them it must wait until
the oldest ages out. ``FailureWindow`` keeps them in memory, per process and bounded:
beyond ``max_entries`` the least recently failed keys are dropped. Losing it on restart is
fine: it only slows guessing down. Used by the console's sign-in throttle and the
admin-token throttle through the ``Failures`` seam: ``LocalFailures`` embedded, and in
cluster mode ``relay.cluster.redis_failures.RedisFailures``, whose counts every instance
shares (N instances must not mean N times the guesses).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Protocol

__all__ = ["FailureWindow", "Failures", "LocalFailures"]


class Failures(Protocol):
    """Failures per key within a window, wherever they are counted."""

    async def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may try again; 0 when it may now."""
        ...

    async def add(self, key: str) -> None: ...

    async def clear(self, key: str) -> None: ...


class FailureWindow:
    """Failure times per key (oldest first), bounded in keys."""

    def __init__(self, limit: int, window_s: float, max_entries: int) -> None:
        self._limit = limit
        self._window_s = window_s
        self._max_entries = max_entries
        self._times: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, key: str, now: float) -> float:
        """Seconds until ``key`` may try again; 0 when it may now."""
        times = self._times.get(key)
        if times is None:
            return 0.0
        while times and times[0] <= now - self._window_s:
            times.popleft()
        if not times:
            del self._times[key]
            return 0.0
        if len(times) < self._limit:
            return 0.0
        return times[0] + self._window_s - now

    def add(self, key: str, now: float) -> None:
        times = self._times.setdefault(key, deque(maxlen=self._limit))
        times.append(now)
        self._times.move_to_end(key)
        while len(self._times) > self._max_entries:
            self._times.popitem(last=False)

    def clear(self, key: str) -> None:
        self._times.pop(key, None)


class LocalFailures:
    """A ``FailureWindow`` of this process behind the ``Failures`` seam, on ``clock``."""

    def __init__(
        self,
        limit: int,
        window_s: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = FailureWindow(limit, window_s, max_entries)
        self._clock = clock

    async def retry_after(self, key: str) -> float:
        return self._window.retry_after(key, self._clock())

    async def add(self, key: str) -> None:
        self._window.add(key, self._clock())

    async def clear(self, key: str) -> None:
        self._window.clear(key)
