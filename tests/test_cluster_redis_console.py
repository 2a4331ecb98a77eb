"""relay.cluster.redis_failures and relay.console.redis_flash against a real, throwaway
redis-server: the rules of the in-memory FailureWindow and FlashStore, with TTLs, on
clients that stand for different instances."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support_cluster import _free_port

from relay.cluster.redis_failures import RedisFailures
from relay.console.redis_flash import RedisFlashStore
from relay.errors import StorageUnavailable

redis_asyncio = pytest.importorskip("redis.asyncio")


@pytest.fixture
async def clients(redis_server: Any) -> AsyncIterator[list[Any]]:
    made = [redis_asyncio.Redis.from_url(redis_server.url) for _ in range(2)]
    try:
        yield made
    finally:
        for client in made:
            await client.aclose()


async def test_failures_from_two_clients_share_one_window(
    clients: list[Any], redis_prefix: str
) -> None:
    one, two = (
        RedisFailures(c, "login-ip", limit=3, window_s=0.5, prefix=redis_prefix) for c in clients
    )
    assert (await one.take("10.0.0.1")).wait_s == 0
    assert (await two.take("10.0.0.1")).wait_s == 0
    assert await one.retry_after("10.0.0.1") == 0
    last = await one.take("10.0.0.1")
    assert last.wait_s == 0
    wait = await two.retry_after("10.0.0.1")
    assert 0 < wait <= 0.5
    assert await two.retry_after("10.0.0.2") == 0  # another key is not affected
    # Refused guesses are not counted, a forgiven one frees its slot, and the key expires
    # with its window.
    for _ in range(5):
        assert (await two.take("10.0.0.1")).wait_s > 0
    (key,) = [k async for k in clients[0].scan_iter(match=f"{redis_prefix}failures:*")]
    assert await clients[0].zcard(key) == 3
    assert 0 < await clients[0].pttl(key) <= 500
    assert b"10.0.0.1" not in key  # the counted value is hashed
    await two.forgive("10.0.0.1", last.mark)
    assert await clients[0].zcard(key) == 2
    assert await one.retry_after("10.0.0.1") == 0
    await asyncio.sleep(0.55)
    assert await one.retry_after("10.0.0.1") == 0
    await one.take("10.0.0.1")
    await one.clear("10.0.0.1")
    assert [k async for k in clients[0].scan_iter(match=f"{redis_prefix}failures:*")] == []


async def test_guesses_sent_at_once_to_two_instances_get_exactly_limit_slots(
    clients: list[Any], redis_prefix: str
) -> None:
    one, two = (
        RedisFailures(c, "admin-token", limit=5, window_s=30, prefix=redis_prefix) for c in clients
    )
    taken = await asyncio.gather(*(w.take("10.0.0.9") for _ in range(20) for w in (one, two)))
    assert sum(t.wait_s == 0 for t in taken) == 5
    await one.clear("10.0.0.9")


async def test_a_flash_is_read_once_by_its_owner_and_expires(
    clients: list[Any], redis_prefix: str
) -> None:
    one, two = (RedisFlashStore(c, prefix=redis_prefix, ttl_ms=300) for c in clients)
    token = await one.put("session-a", {"secret": "rk_x"})
    assert await two.take("session-b", token) is None  # someone else's: not consumed
    assert await two.take("session-a", token) == {"secret": "rk_x"}
    assert await one.take("session-a", token) is None  # once only
    old = await one.put("session-a", {"secret": "rk_y"})
    await asyncio.sleep(0.35)
    assert await two.take("session-a", old) is None  # gone with its TTL, read or not
    assert [k async for k in clients[0].scan_iter(match=f"{redis_prefix}flash:*")] == []


async def test_a_redis_that_does_not_answer_is_storage_unavailable() -> None:
    down = redis_asyncio.Redis(host="127.0.0.1", port=_free_port(), socket_connect_timeout=0.5)
    try:
        failures = RedisFailures(down, "admin-token", limit=1, window_s=1)
        flashes = RedisFlashStore(down)
        for call in (
            failures.retry_after("ip"),
            failures.take("ip"),
            failures.forgive("ip", "mark"),
            failures.clear("ip"),
            flashes.put("s", {"secret": "rk_z"}),
            flashes.take("s", "token"),
        ):
            with pytest.raises(StorageUnavailable):
                await call
    finally:
        await down.aclose()
