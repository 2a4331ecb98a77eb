"""Failure counts every instance shares (``relay.http.failures.Failures`` in Redis).

The sign-in and admin-token throttles count guesses per IP and per email; behind a load
balancer each instance counting its own would allow N times the guesses. Here a key's
failures are a sorted set of failure times (Redis's own clock, ``TIME``, so instances with
skewed clocks agree), trimmed to the last ``limit`` and expiring ``window_s`` after the
latest, with the rule of ``FailureWindow``: once ``limit`` failures are younger than the
window, the key waits until the oldest ages out. Checking and counting a guess is one Lua
script, so two instances counting at once can neither lose a failure nor both pass the
last free slot.

Key names hold a SHA-256 of the counted value, never an email or an IP in clear. A Redis
failure raises ``StorageUnavailable``: the throttles fail closed (docs/scaling.md §2.3).
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any, NamedTuple

from relay.cluster.redis_errors import redis_answers

__all__ = ["RedisFailures", "Taken"]


class Taken(NamedTuple):
    """A counted guess: ``wait_s`` > 0 when refused (nothing counted), else its ``mark``.
    (Here rather than in ``relay.http.failures``: relay.cluster does not import relay.http.)"""

    wait_s: float
    mark: str


_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: the set; ARGV: window_ms, limit. Returns the ms to wait (0: may try now).
_RETRY_AFTER = (
    _NOW
    + """
local window, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then return 0 end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""
)

# KEYS: the set; ARGV: window_ms, limit, a unique member. _RETRY_AFTER, then the guess
# counted when it may go: one script, so no guess of another instance falls between the
# check and the count. Refused guesses are not counted, so the set never exceeds ``limit``.
_TAKE = (
    _NOW
    + """
local window, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return 0
"""
)


class RedisFailures:
    """One throttle's failures (``name``: e.g. ``login-email``) over a shared client."""

    def __init__(
        self, client: Any, name: str, *, limit: int, window_s: float, prefix: str = "relay:"
    ) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("a failure window needs limit >= 1 and a positive window_s")
        self._client = client
        self._prefix = f"{prefix}failures:{name}:"
        self._limit = limit
        self._window_ms = int(window_s * 1000)
        self._retry_after = client.register_script(_RETRY_AFTER)
        self._take = client.register_script(_TAKE)

    def _key(self, value: str) -> str:
        return self._prefix + hashlib.sha256(value.encode()).hexdigest()

    async def retry_after(self, key: str) -> float:
        with redis_answers():
            wait_ms = await self._retry_after(
                keys=[self._key(key)], args=[self._window_ms, self._limit]
            )
        return int(wait_ms) / 1000.0

    async def take(self, key: str) -> Taken:
        member = secrets.token_hex(8)
        with redis_answers():
            wait_ms = await self._take(
                keys=[self._key(key)], args=[self._window_ms, self._limit, member]
            )
        return Taken(int(wait_ms) / 1000.0, member)

    async def forgive(self, key: str, mark: str) -> None:
        with redis_answers():
            await self._client.zrem(self._key(key), mark)

    async def clear(self, key: str) -> None:
        with redis_answers():
            await self._client.delete(self._key(key))
