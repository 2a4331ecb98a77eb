"""Recent failures per client (an IP, an email), counted for lockouts.

Failures are kept for ``window_s``; once a key has ``limit`` of them it must wait until
the oldest ages out. ``FailureWindow`` keeps them in memory, per process and bounded:
beyond ``max_entries`` the least recently failed keys are dropped. Losing it on restart is
fine: it only slows guessing down. Used by the console's sign-in throttle and the
admin-token throttle through the ``Failures`` seam: ``LocalFailures`` embedded, and in
cluster mode ``relay.cluster.redis_failures.RedisFailures``, whose counts every instance
shares (N instances must not mean N times the guesses).

A guess is counted *before* it is checked (``take``) and forgiven after if it was right
(``forgive``): checking first and counting after would let a burst of guesses sent at once
all pass the check before the first failure is counted, overshooting the limit by the
burst's size (the password check is an argon2 hash in a thread, and in cluster mode the
guesses may reach several instances).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Protocol

from relay.cluster.redis_failures import Taken

__all__ = ["FailureWindow", "Failures", "LocalFailures", "Taken"]


class Failures(Protocol):
    """Failures per key within a window, wherever they are counted."""

    async def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may try again; 0 when it may now."""
        ...

    async def take(self, key: str) -> Taken:
        """Count a guess now if ``key`` may guess, in one step (nothing between the check
        and the count); refused guesses are not counted."""
        ...

    async def forgive(self, key: str, mark: str) -> None:
        """Uncount the guess ``take`` counted as ``mark`` (it was right)."""
        ...

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

    def _add(self, key: str, now: float) -> None:
        times = self._times.setdefault(key, deque(maxlen=self._limit))
        times.append(now)
        self._times.move_to_end(key)
        while len(self._times) > self._max_entries:
            self._times.popitem(last=False)

    def take(self, key: str, now: float) -> float:
        """0 and ``now`` counted when ``key`` may guess; else the wait, nothing counted."""
        wait_s = self.retry_after(key, now)
        if wait_s <= 0:
            self._add(key, now)
        return wait_s

    def forgive(self, key: str, at: float) -> None:
        times = self._times.get(key)
        if times is not None and at in times:
            times.remove(at)

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

    async def take(self, key: str) -> Taken:
        now = self._clock()
        return Taken(self._window.take(key, now), repr(now))

    async def forgive(self, key: str, mark: str) -> None:
        self._window.forgive(key, float(mark))

    async def clear(self, key: str) -> None:
        self._window.clear(key)
