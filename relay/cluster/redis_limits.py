"""Rate limits shared by N instances: token buckets and concurrency leases in Redis.

The cluster counterpart of ``relay.admission.limits.RateLimiter``, with the same rule: a
request gets a slot only if EVERY limit allows it, and only then is anything consumed (a
refused request costs no budget anywhere). That needs one atomic step over all of a
request's limits, so ``take`` is one Lua script (one round trip) that checks every bucket
and every concurrency set, then takes from all of them or from none.

- A token bucket is a hash ``{tokens, ts}`` refilled continuously from Redis's own clock
  (``TIME``), so instances with skewed clocks agree. A request for more than the capacity
  takes the whole bucket and leaves debt, as in the embedded limiter.
- Concurrency is a sorted set of slot ids scored by lease expiry (ms). Expired members are
  dropped before counting, so a crashed instance's slots free themselves after ``lease_ms``;
  a live instance renews its in-flight slots (``renew``) from its heartbeat.
- Keys carry TTLs so idle limits vanish. Single Redis primary: the scripts touch several keys,
  which Redis Cluster would need in one hash slot (not supported here; docs/scaling.md).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import msgspec

from relay.cluster.redis_errors import redis_answers
from relay.errors import RateLimited

__all__ = ["Bucket", "ClusterSlot", "Concurrency", "RedisLimiter"]

_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nb, nc = tonumber(ARGV[1]), tonumber(ARGV[2])
local lease, member = tonumber(ARGV[3]), ARGV[4]
local wait, busy, levels = 0, 0, {}
for i = 1, nb do
  local base = 4 + (i - 1) * 3
  local cap, rate, n = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  local s = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local tokens, ts = tonumber(s[1]), tonumber(s[2])
  if tokens == nil then tokens, ts = cap, now end
  if now > ts then tokens = math.min(cap, tokens + (now - ts) * rate) end
  levels[i] = tokens
  local need = math.min(n, cap)
  if need > tokens then wait = math.max(wait, (need - tokens) / rate) end
end
local cbase = 4 + nb * 3
for j = 1, nc do
  local key, limit = KEYS[nb + j], tonumber(ARGV[cbase + j])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if limit > 0 and redis.call('ZCARD', key) >= limit then busy = 1 end
end
if wait > 0 or busy == 1 then return {0, tostring(wait), busy} end
for i = 1, nb do
  local base = 4 + (i - 1) * 3
  local cap, rate, n = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  redis.call('HSET', KEYS[i], 'tokens', tostring(levels[i] - n), 'ts', now)
  redis.call('PEXPIRE', KEYS[i], math.ceil(cap / rate) + 60000)
end
for j = 1, nc do
  redis.call('ZADD', KEYS[nb + j], now + lease, member)
  redis.call('PEXPIRE', KEYS[nb + j], lease * 2)
end
return {1, '0', 0}
"""

# KEYS: concurrency sets, then buckets to correct; ARGV: nc, member, then (cap, rate, delta)
# per bucket. delta > 0 charges more tokens (debt allowed), < 0 gives them back.
_RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local nc, member = tonumber(ARGV[1]), ARGV[2]
for j = 1, nc do redis.call('ZREM', KEYS[j], member) end
for i = nc + 1, #KEYS do
  local base = 2 + (i - nc - 1) * 3
  local cap, rate, delta = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]),
    tonumber(ARGV[base + 3])
  if delta ~= 0 then
    local s = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
    local tokens, ts = tonumber(s[1]), tonumber(s[2])
    if tokens == nil then tokens, ts = cap, now end
    if now > ts then tokens = math.min(cap, tokens + (now - ts) * rate) end
    redis.call('HSET', KEYS[i], 'tokens', tostring(math.min(cap, tokens - delta)), 'ts', now)
    redis.call('PEXPIRE', KEYS[i], math.ceil(cap / rate) + 60000)
  end
end
return 1
"""

# KEYS: concurrency sets; ARGV: lease_ms, then one member per key. XX: never resurrect a
# slot that was already released.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for j = 1, #KEYS do
  redis.call('ZADD', KEYS[j], 'XX', now + lease, ARGV[j + 1])
  redis.call('PEXPIRE', KEYS[j], lease * 2)
end
return #KEYS
"""

# A concurrency refusal has no refill time to report (as relay.admission.limits).
_CONCURRENCY_RETRY_AFTER_S = 1.0


class Bucket(msgspec.Struct, frozen=True):
    """A per-minute token bucket: ``name`` e.g. ``key:K:rpm``; ``amount`` to take now."""

    name: str
    per_minute: int
    amount: int = 1

    @property
    def refill_per_ms(self) -> float:
        return self.per_minute / 60_000.0


class Concurrency(msgspec.Struct, frozen=True):
    """An in-flight limit (0 = unlimited, still counted): ``name`` e.g. ``key:K``."""

    name: str
    limit: int


class ClusterSlot(msgspec.Struct, frozen=True):
    """What ``take`` took: give it back once with ``release``."""

    member: str
    buckets: tuple[Bucket, ...]
    concurrency: tuple[Concurrency, ...]


class RedisLimiter:
    """Limits of one instance over a shared ``redis.asyncio.Redis`` client."""

    def __init__(
        self, client: Any, instance_id: str, *, lease_ms: int = 30_000, prefix: str = "relay:"
    ) -> None:
        if lease_ms <= 0:
            raise ValueError("lease_ms must be positive")
        self._client = client
        self.instance_id = instance_id
        self.lease_ms = lease_ms
        self._prefix = prefix
        self._take = client.register_script(_TAKE)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)

    def _bucket_key(self, bucket: Bucket) -> str:
        return f"{self._prefix}bucket:{bucket.name}"

    def _concurrency_key(self, limit: Concurrency) -> str:
        return f"{self._prefix}inflight:{limit.name}"

    async def take(
        self, buckets: Sequence[Bucket] = (), concurrency: Sequence[Concurrency] = ()
    ) -> ClusterSlot:
        """Take from every bucket and a place in every concurrency set, or from none and
        raise ``RateLimited`` with the seconds to wait."""
        for bucket in buckets:
            if bucket.per_minute <= 0 or bucket.amount < 0:
                raise ValueError("a bucket needs a positive per_minute and amount >= 0")
        member = f"{self.instance_id}:{secrets.token_hex(8)}"
        args: list[Any] = [len(buckets), len(concurrency), self.lease_ms, member]
        for bucket in buckets:
            args += [bucket.per_minute, repr(bucket.refill_per_ms), bucket.amount]
        args += [limit.limit for limit in concurrency]
        keys = [self._bucket_key(b) for b in buckets]
        keys += [self._concurrency_key(c) for c in concurrency]
        # A Redis failure admits nothing: a slot the script may have placed expires with
        # its lease.
        with redis_answers():
            ok, wait_ms, busy = await self._take(keys=keys, args=args)
        if int(ok) != 1:
            if int(busy):
                raise RateLimited(
                    "too many requests in flight for this key or account",
                    retry_after_s=_CONCURRENCY_RETRY_AFTER_S,
                    code="concurrency_limit_exceeded",
                )
            raise RateLimited(
                "rate limit reached; retry after the indicated time",
                retry_after_s=max(0.001, float(wait_ms) / 1000.0),
            )
        return ClusterSlot(member=member, buckets=tuple(buckets), concurrency=tuple(concurrency))

    async def release(
        self, slot: ClusterSlot, corrections: Sequence[tuple[Bucket, int]] = ()
    ) -> None:
        """Free the slot's concurrency places and correct buckets by ``delta`` tokens (the
        measured minus the estimated count: TPM is charged from an estimate at ``take``)."""
        keys = [self._concurrency_key(c) for c in slot.concurrency]
        args: list[Any] = [len(slot.concurrency), slot.member]
        for bucket, delta in corrections:
            keys.append(self._bucket_key(bucket))
            args += [bucket.per_minute, repr(bucket.refill_per_ms), delta]
        await self._release(keys=keys, args=args)

    async def renew(self, slots: Sequence[ClusterSlot]) -> None:
        """Extend the leases of this instance's in-flight slots (its heartbeat calls this)."""
        keys: list[str] = []
        args: list[Any] = [self.lease_ms]
        for slot in slots:
            for limit in slot.concurrency:
                keys.append(self._concurrency_key(limit))
                args.append(slot.member)
        if keys:
            await self._renew(keys=keys, args=args)

    async def in_flight(self, limit: Concurrency) -> int:
        """Live (unexpired) slots of one concurrency set, from every instance."""
        key = self._concurrency_key(limit)
        seconds, micros = await self._client.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        return int(await self._client.zcount(key, f"({now_ms}", "+inf"))
