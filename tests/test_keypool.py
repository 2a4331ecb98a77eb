"""Tests for upstream.keypool: least-busy pick, 429 cooldowns, 401/403 removal, key privacy."""

from __future__ import annotations

import logging

import pytest

from relay.upstream.keypool import DEFAULT_COOLDOWN_S, MAX_COOLDOWN_S, KeyPool

SECRETS = ("sk-secret-aaaa", "sk-secret-bbbb", "sk-secret-cccc")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def pool(clock: FakeClock) -> KeyPool:
    return KeyPool("openai", SECRETS, clock=clock)


def test_keys_are_numbered_from_one_and_never_show_their_secret(pool: KeyPool) -> None:
    assert [key.index for key in pool.keys] == [1, 2, 3]
    assert repr(pool.keys[0]) == "UpstreamKey(#1)"
    assert "sk-secret" not in repr(pool.health())
    assert pool.configured
    assert not KeyPool("empty", []).configured


def test_acquire_picks_the_least_busy_key(pool: KeyPool) -> None:
    first = pool.acquire()
    second = pool.acquire()
    third = pool.acquire()
    assert first and second and third
    assert {first.index, second.index, third.index} == {1, 2, 3}
    pool.release(second)
    again = pool.acquire()
    assert again is second
    assert [key.in_flight for key in pool.keys] == [1, 1, 1]


def test_acquire_skips_excluded_keys_and_gives_none_when_nothing_is_left(pool: KeyPool) -> None:
    key = pool.acquire(exclude={1, 2})
    assert key is not None and key.index == 3
    assert pool.acquire(exclude={1, 2, 3}) is None


def test_a_429_cools_the_key_down_for_the_retry_after(pool: KeyPool, clock: FakeClock) -> None:
    key = pool.acquire()
    assert key is not None and key.index == 1
    pool.release(key)
    assert pool.cool_down(key, "7") == 7.0
    picked = [pool.acquire() for _ in range(4)]
    assert all(k is not None and k.index != 1 for k in picked)
    for k in picked:
        assert k is not None
        pool.release(k)
    clock.now += 6.9
    assert all((k := pool.acquire()) is not None and k.index != 1 for _ in range(3))
    clock.now += 0.2
    assert any((k := pool.acquire()) is not None and k.index == 1 for _ in range(3))


@pytest.mark.parametrize(
    ("retry_after", "seconds"),
    [
        (None, DEFAULT_COOLDOWN_S),
        ("", DEFAULT_COOLDOWN_S),
        ("0", DEFAULT_COOLDOWN_S),
        ("-5", DEFAULT_COOLDOWN_S),
        ("2.5", 2.5),
        ("Wed, 21 Oct 2015 07:28:00 GMT", DEFAULT_COOLDOWN_S),
        ("86400", MAX_COOLDOWN_S),
        ("nan", DEFAULT_COOLDOWN_S),
        ("inf", MAX_COOLDOWN_S),
    ],
)
def test_retry_after_is_bounded(pool: KeyPool, retry_after: str | None, seconds: float) -> None:
    assert pool.cool_down(pool.keys[0], retry_after) == seconds


def test_a_longer_cooldown_is_never_shortened(pool: KeyPool, clock: FakeClock) -> None:
    key = pool.keys[0]
    pool.cool_down(key, "30")
    pool.cool_down(key, "1")
    assert key.cooldown_until == clock.now + 30


def test_seconds_until_ready_is_the_shortest_cooldown(pool: KeyPool, clock: FakeClock) -> None:
    assert pool.seconds_until_ready() == 0.0
    pool.cool_down(pool.keys[0], "10")
    pool.cool_down(pool.keys[1], "4")
    assert pool.seconds_until_ready() == 0.0  # key #3 is ready now
    pool.cool_down(pool.keys[2], "20")
    assert pool.seconds_until_ready() == 4.0
    assert pool.acquire() is None
    clock.now += 4
    key = pool.acquire()
    assert key is not None and key.index == 2


def test_seconds_until_ready_ignores_disabled_keys(pool: KeyPool) -> None:
    pool.disable(pool.keys[0], 401)
    pool.disable(pool.keys[1], 403)
    pool.cool_down(pool.keys[2], "9")
    assert pool.seconds_until_ready() == 9.0
    assert pool.has_usable_key  # cooling is not gone
    pool.disable(pool.keys[2], 401)
    assert pool.seconds_until_ready() is None
    assert not pool.has_usable_key and pool.configured


def test_a_rejected_key_leaves_rotation_and_the_log_names_it_by_position(
    pool: KeyPool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="relay.upstream.keypool")
    pool.disable(pool.keys[1], 401)
    pool.disable(pool.keys[1], 401)  # logged once
    pool.cool_down(pool.keys[0], "3")
    assert all(k is not None and k.index == 3 for k in (pool.acquire(), pool.acquire()))
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "key #2" in messages[0] and "401" in messages[0]
    assert "key #1" in messages[1]
    for secret in SECRETS:
        assert secret not in caplog.text
    assert pool.health()[1] == {
        "key": "#2",
        "in_flight": 0,
        "cooling_down_s": 0.0,
        "disabled": "upstream answered 401",
    }
    assert pool.health()[0]["cooling_down_s"] == 3.0
