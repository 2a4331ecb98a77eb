"""Sign-in throttling: failed attempts counted per client IP and per email, in memory.

Failures are kept for ``window_s``; once an IP or an email has ``max_failures`` of them,
further attempts are refused without checking the password (so guessing costs the
attacker time and costs relay no argon2 work) until the oldest failure ages out. A
success clears the email's count. The state is per process and bounded: the least
recently failed entries are dropped beyond ``max_entries``. Losing it on restart is fine;
it only slows guessing down.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

__all__ = ["LoginThrottle"]


class _Failures:
    """Failure times per key (oldest first), bounded in keys."""

    def __init__(self, limit: int, window_s: float, max_entries: int) -> None:
        self._limit = limit
        self._window_s = window_s
        self._max_entries = max_entries
        self._times: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, key: str, now: float) -> float:
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


class LoginThrottle:
    def __init__(
        self,
        *,
        per_email: int = 5,
        per_ip: int = 20,
        window_s: float = 900.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._emails = _Failures(per_email, window_s, max_entries)
        self._ips = _Failures(per_ip, window_s, max_entries)
        self._clock = clock

    def retry_after(self, ip: str, email: str) -> float:
        """Seconds until this IP and email may try again; 0 when allowed now."""
        now = self._clock()
        return max(self._ips.retry_after(ip, now), self._emails.retry_after(email, now))

    def failed(self, ip: str, email: str) -> None:
        now = self._clock()
        self._ips.add(ip, now)
        self._emails.add(email, now)

    def succeeded(self, email: str) -> None:
        self._emails.clear(email)
