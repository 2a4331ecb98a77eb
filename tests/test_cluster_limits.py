"""relay.cluster's Redis limits and invalidation against a real, throwaway redis-server.

Each "instance" has its own Redis client (its own connections), as separate relay
processes would; they share nothing but the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from relay.cluster.invalidation import Invalidation, InvalidationBus
from relay.cluster.redis_limits import Bucket, Concurrency, RedisLimiter
from relay.errors import RateLimited, StorageUnavailable

redis_asyncio = pytest.importorskip("redis.asyncio")


@pytest.fixture
async def clients(redis_server: Any) -> AsyncIterator[list[Any]]:
    made = [redis_asyncio.Redis.from_url(redis_server.url) for _ in range(3)]
    try:
        yield made
    finally:
        for client in made:
            await client.aclose()


def limiters(clients: list[Any], prefix: str, lease_ms: int = 30_000) -> list[RedisLimiter]:
    return [
        RedisLimiter(client, f"i{n}", lease_ms=lease_ms, prefix=prefix)
        for n, client in enumerate(clients)
    ]


async def test_concurrency_5_is_never_exceeded_across_three_instances(
    clients: list[Any], redis_prefix: str
) -> None:
    nodes = limiters(clients, redis_prefix)
    limit = Concurrency("key:k", 5)
    in_flight = 0
    peak = 0
    admitted = 0
    refused = 0

    async def request(n: int) -> None:
        nonlocal in_flight, peak, admitted, refused
        node = nodes[n % 3]
        try:
            slot = await node.take(concurrency=[limit])
        except RateLimited as exc:
            assert exc.retry_after_s > 0
            refused += 1
            return
        in_flight += 1
        admitted += 1
        peak = max(peak, in_flight)
        assert await node.in_flight(limit) <= 5
        await asyncio.sleep(0.005 * (n % 4))
        in_flight -= 1
        await node.release(slot)

    for _ in range(3):  # three waves of 60 requests
        await asyncio.gather(*(request(n) for n in range(60)))
    assert 2 <= peak <= 5  # concurrent, never past the limit
    assert admitted >= 15 and refused > 0
    assert await nodes[0].in_flight(limit) == 0


async def test_a_crashed_instances_slots_expire_after_their_lease(
    clients: list[Any], redis_prefix: str
) -> None:
    crashed, alive, _ = limiters(clients, redis_prefix, lease_ms=1_500)
    limit = Concurrency("key:k", 2)
    for _ in range(2):
        await crashed.take(concurrency=[limit])  # never released: the instance died
    with pytest.raises(RateLimited):
        await alive.take(concurrency=[limit])
    await asyncio.sleep(1.6)
    slot = await alive.take(concurrency=[limit])
    assert await alive.in_flight(limit) == 1
    await alive.release(slot)


async def test_renewed_slots_outlive_their_first_lease(
    clients: list[Any], redis_prefix: str
) -> None:
    owner, other, _ = limiters(clients, redis_prefix, lease_ms=1_500)
    limit = Concurrency("acct:a", 1)
    slot = await owner.take(concurrency=[limit])
    for _ in range(4):  # 2 s in all: past the first lease
        await asyncio.sleep(0.5)
        await owner.renew([slot])
    with pytest.raises(RateLimited):
        await other.take(concurrency=[limit])
    await owner.release(slot)
    await other.release(await other.take(concurrency=[limit]))


async def test_a_bucket_is_shared_and_a_refusal_consumes_nothing_anywhere(
    clients: list[Any], redis_prefix: str
) -> None:
    a, b, c = limiters(clients, redis_prefix)
    rpm = Bucket("key:k:rpm", 60)
    narrow = Bucket("acct:a:rpm", 1)
    for node in (a, b, c) * 3:
        await node.take(buckets=[rpm])  # 9 of the key's 60 taken, from three instances
    await a.take(buckets=[rpm, narrow])  # 10
    with pytest.raises(RateLimited) as refused:
        await b.take(buckets=[rpm, narrow])  # the account's bucket is empty...
    assert 0 < refused.value.retry_after_s <= 60
    for n in range(50):  # ...and the refusal took nothing from the key's: 50 remain
        await (a, b, c)[n % 3].take(buckets=[rpm])
    with pytest.raises(RateLimited) as empty:
        await c.take(buckets=[rpm])
    assert 0.5 < empty.value.retry_after_s <= 1.5  # 60/minute: one token a second


async def test_tokens_per_minute_are_corrected_to_the_measured_count_on_release(
    clients: list[Any], redis_prefix: str
) -> None:
    a, b, _ = limiters(clients, redis_prefix)
    tpm = Bucket("key:k:tpm", 1_000, amount=100)
    slot = await a.take(buckets=[tpm])
    await a.release(slot, corrections=[(tpm, 1_400)])  # used 1,500: 600 tokens of debt
    with pytest.raises(RateLimited) as refused:
        await b.take(buckets=[Bucket("key:k:tpm", 1_000, amount=1)])
    assert refused.value.retry_after_s > 30  # ~601 tokens at 1,000 a minute
    slot = await b.take(buckets=[Bucket("key:k:other", 1_000, amount=500)])
    await b.release(slot, corrections=[(Bucket("key:k:other", 1_000), -400)])
    # 500 left after the take, 400 given back: 900 can be taken at once (not 1,000).
    with pytest.raises(RateLimited):
        await b.take(buckets=[Bucket("key:k:other", 1_000, amount=1_000)])
    await b.take(buckets=[Bucket("key:k:other", 1_000, amount=900)])


async def test_a_revocation_published_on_one_instance_reaches_another_within_a_second(
    clients: list[Any], redis_prefix: str
) -> None:
    seen: dict[str, list[Invalidation]] = {"a": [], "b": []}
    arrived = asyncio.Event()

    def handler(name: str) -> Any:
        async def on_invalidate(change: Invalidation) -> None:
            seen[name].append(change)
            if name == "b":
                arrived.set()

        return on_invalidate

    a = InvalidationBus(clients[0], "inst-a", handler("a"), prefix=redis_prefix)
    b = InvalidationBus(clients[1], "inst-b", handler("b"), prefix=redis_prefix)
    await a.start()
    await b.start()
    try:
        started = time.perf_counter()
        version = await a.publish("key", "key_123")
        await asyncio.wait_for(arrived.wait(), timeout=1.0)
        elapsed = time.perf_counter() - started
        assert elapsed < 1.0
        change = seen["b"][0]
        assert (change.kind, change.target, change.origin) == ("key", "key_123", "inst-a")
        assert change.version == version == b.seen_version
        assert not await b.check_version()  # nothing missed
    finally:
        await a.stop()
        await b.stop()


async def test_a_lost_message_is_caught_by_the_version_check(
    clients: list[Any], redis_prefix: str
) -> None:
    changes: list[Invalidation] = []

    async def on_invalidate(change: Invalidation) -> None:
        changes.append(change)

    bus = InvalidationBus(clients[0], "inst", on_invalidate, prefix=redis_prefix)
    await bus.start()
    try:
        # Another instance bumped the version while this one was disconnected.
        await clients[1].incr(f"{redis_prefix}invalidate:version")
        assert await bus.check_version()
        assert [c.kind for c in changes] == ["all"]
        assert not await bus.check_version()
    finally:
        await bus.stop()


async def test_a_burst_past_the_pool_waits_and_redis_down_is_a_503(
    redis_server: Any, redis_prefix: str
) -> None:
    # redis-py's default pool raises MaxConnectionsError past 100 connections: with more
    # requests than that in flight on one instance, they wait for a connection instead.
    pool = redis_asyncio.BlockingConnectionPool.from_url(
        redis_server.url, max_connections=4, timeout=5
    )
    client = redis_asyncio.Redis.from_pool(pool)
    try:
        node = RedisLimiter(client, "burst", prefix=redis_prefix)
        slots = await asyncio.gather(
            *(node.take(concurrency=[Concurrency("key:burst", 1000)]) for _ in range(200))
        )
        assert len(slots) == 200
        await asyncio.gather(*(node.release(slot) for slot in slots))
    finally:
        await client.aclose()
    # Nothing listens there: the take is refused with 503, not an internal error.
    down = redis_asyncio.Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.5)
    try:
        with pytest.raises(StorageUnavailable, match="Redis did not answer"):
            await RedisLimiter(down, "down", prefix=redis_prefix).take(
                concurrency=[Concurrency("key:down", 5)]
            )
    finally:
        await down.aclose()
