"""Sign-in throttling: failed attempts counted per client IP and per email.

Once an IP or an email has too many recent failures (``relay.http.failures``), further
attempts are refused without checking the password (so guessing costs the attacker time
and costs relay no argon2 work) until the oldest failure ages out. A success clears the
email's count. The IP is the client's as ``relay.http.client_ip`` resolves it, so behind
a trusted proxy each client is counted on its own.

Embedded, the counts live in this process (``in_memory``); in cluster mode they live in the
cluster's Redis (``in_redis``), so every instance counts the same guesses with the same
limits. Redis not answering raises ``StorageUnavailable``: sign-in fails closed (503),
since a throttle that cannot count would let guessing run unlimited.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from relay.cluster.redis_failures import RedisFailures
from relay.http.failures import Failures, LocalFailures

__all__ = ["PER_EMAIL", "PER_IP", "WINDOW_S", "LoginThrottle"]

PER_EMAIL = 5
PER_IP = 20
WINDOW_S = 900.0


class LoginThrottle:
    def __init__(self, emails: Failures, ips: Failures) -> None:
        self._emails = emails
        self._ips = ips

    @classmethod
    def in_memory(
        cls,
        *,
        per_email: int = PER_EMAIL,
        per_ip: int = PER_IP,
        window_s: float = WINDOW_S,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> LoginThrottle:
        return cls(
            LocalFailures(per_email, window_s, max_entries, clock),
            LocalFailures(per_ip, window_s, max_entries, clock),
        )

    @classmethod
    def in_redis(
        cls,
        client: Any,
        *,
        per_email: int = PER_EMAIL,
        per_ip: int = PER_IP,
        window_s: float = WINDOW_S,
    ) -> LoginThrottle:
        return cls(
            RedisFailures(client, "login-email", limit=per_email, window_s=window_s),
            RedisFailures(client, "login-ip", limit=per_ip, window_s=window_s),
        )

    async def retry_after(self, ip: str, email: str) -> float:
        """Seconds until this IP and email may try again; 0 when allowed now."""
        return max(await self._ips.retry_after(ip), await self._emails.retry_after(email))

    async def failed(self, ip: str, email: str) -> None:
        await self._ips.add(ip)
        await self._emails.add(email)

    async def succeeded(self, email: str) -> None:
        await self._emails.clear(email)
