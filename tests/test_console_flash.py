"""The console's one-time flash: read once, by its own session only, gone after its TTL,
and bounded in size."""

from __future__ import annotations

from relay.console.flash import TTL_MS, FlashStore


async def test_a_flash_is_read_once_by_its_owner() -> None:
    store = FlashStore()
    token = await store.put("session-a", {"secret": "rk_x"})
    assert await store.take("session-b", token) is None  # someone else's session
    assert await store.take("session-a", token) == {"secret": "rk_x"}
    assert await store.take("session-a", token) is None  # once only
    assert await store.take("session-a", "made-up") is None


async def test_flashes_expire_and_the_store_stays_bounded() -> None:
    now = [0]
    store = FlashStore(clock=lambda: now[0], max_items=3)
    old = await store.put("s", {"n": "1"})
    now[0] = TTL_MS + 1
    assert await store.take("s", old) is None
    tokens = [await store.put("s", {"n": str(i)}) for i in range(5)]
    assert len(store) == 3
    assert await store.take("s", tokens[0]) is None  # the oldest made room
    assert await store.take("s", tokens[4]) == {"n": "4"}
