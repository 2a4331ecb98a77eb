"""Sign-in throttling: failed attempts counted per client IP and per email, in memory.

Once an IP or an email has too many recent failures (``relay.http.failures``), further
attempts are refused without checking the password (so guessing costs the attacker time
and costs relay no argon2 work) until the oldest failure ages out. A success clears the
email's count. The IP is the client's as ``relay.http.client_ip`` resolves it, so behind
a trusted proxy each client is counted on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from relay.http.failures import FailureWindow

__all__ = ["LoginThrottle"]


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
        self._emails = FailureWindow(per_email, window_s, max_entries)
        self._ips = FailureWindow(per_ip, window_s, max_entries)
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
