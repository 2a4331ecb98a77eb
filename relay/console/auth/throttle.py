"""Sign-in throttling: failed attempts counted per client IP and per email.

Once an IP or an email has too many recent failures (``relay.http.failures``), further
attempts are refused without checking the password (so guessing costs the attacker time
and costs relay no argon2 work) until the oldest failure ages out. An attempt is counted
as a failure when it begins (``begin``), before its password is checked, so attempts sent
at once cannot all pass before the first failure is counted; a success uncounts it and
clears the email's count (``succeeded``), and so does an attempt that could not be checked
(``abandoned``: relay's failure, not a guess). The IP is the client's as
``relay.http.client_ip`` resolves it, so behind a trusted proxy each client is counted on
its own.

Embedded, the counts live in this process (``in_memory``); in cluster mode they live in the
cluster's Redis (``in_redis``), so every instance counts the same guesses with the same
limits. Redis not answering raises ``StorageUnavailable``: sign-in fails closed (503),
since a throttle that cannot count would let guessing run unlimited.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

from relay.cluster.redis_failures import RedisFailures
from relay.http.failures import Failures, LocalFailures

__all__ = ["PER_EMAIL", "PER_IP", "WINDOW_S", "LoginThrottle", "SignInAttempt"]

PER_EMAIL = 5
PER_IP = 20
WINDOW_S = 900.0


class SignInAttempt(NamedTuple):
    """``wait_s`` > 0: refused, nothing counted; else counted under the two marks."""

    wait_s: float
    ip_mark: str = ""
    email_mark: str = ""


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

    async def begin(self, ip: str, email: str) -> SignInAttempt:
        """Count an attempt from this IP for this email as failed until it succeeds, or
        refuse it (nothing counted) when either is locked out."""
        by_ip = await self._ips.take(ip)
        if by_ip.wait_s > 0:
            return SignInAttempt(by_ip.wait_s)
        by_email = await self._emails.take(email)
        if by_email.wait_s > 0:
            await self._ips.forgive(ip, by_ip.mark)
            return SignInAttempt(by_email.wait_s)
        return SignInAttempt(0.0, by_ip.mark, by_email.mark)

    async def succeeded(self, ip: str, email: str, attempt: SignInAttempt) -> None:
        await self._ips.forgive(ip, attempt.ip_mark)
        await self._emails.clear(email)

    async def abandoned(self, ip: str, email: str, attempt: SignInAttempt) -> None:
        await self._ips.forgive(ip, attempt.ip_mark)
        await self._emails.forgive(email, attempt.email_mark)
