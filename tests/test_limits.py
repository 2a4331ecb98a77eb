from __future__ import annotations

import pytest

from relay.admission.limits import (
    CONCURRENCY_RETRY_AFTER_S,
    ConcurrencyCounter,
    LimitSlot,
    RateLimiter,
    TokenBucket,
)
from relay.errors import RateLimited


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def rejection(limiter: RateLimiter, key_id: str = "k1", /, **kwargs: int | str) -> RateLimited:
    with pytest.raises(RateLimited) as info:
        take_slot(limiter, key_id, **kwargs)
    return info.value


def take_slot(limiter: RateLimiter, key_id: str = "k1", /, **kwargs: int | str) -> LimitSlot:
    args: dict[str, int | str] = {"rpm": 0, "tpm": 0, "concurrency": 0, "estimated_tokens": 0}
    args.update(kwargs)
    return limiter.take_slot(key_id, **args)  # type: ignore[arg-type]


# --- TokenBucket -------------------------------------------------------------------------


def test_rpm_bucket_refills_with_exact_retry_after() -> None:
    clock = FakeClock()
    bucket = TokenBucket.per_minute(60, clock)  # one token per second
    for _ in range(60):
        assert bucket.try_take(1) == 0.0
    assert bucket.try_take(1) == 1.0
    clock.advance(0.25)
    assert bucket.try_take(1) == 0.75
    clock.advance(0.75)
    assert bucket.try_take(1) == 0.0
    assert bucket.try_take(1) == 1.0


def test_rejected_take_consumes_nothing() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, 1.0, clock)
    assert bucket.try_take(8) == 0.0
    assert bucket.try_take(5) == 3.0
    assert bucket.try_take(5) == 3.0
    assert bucket.tokens() == 2.0


def test_refill_is_capped_at_capacity() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, 1.0, clock)
    bucket.try_take(10)
    clock.advance(3600)
    assert bucket.tokens() == 10.0
    bucket.refund(5)
    assert bucket.tokens() == 10.0


def test_adjust_into_debt_makes_later_requests_wait() -> None:
    clock = FakeClock()
    bucket = TokenBucket.per_minute(600, clock)  # 10 tokens per second
    assert bucket.try_take(100) == 0.0
    bucket.adjust(700)  # measured 800 instead of the estimated 100
    assert bucket.tokens() == -200.0
    assert bucket.try_take(5) == 20.5
    clock.advance(20.5)
    assert bucket.try_take(5) == 0.0


def test_request_larger_than_capacity_waits_for_a_full_bucket() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, 10.0, clock)
    bucket.try_take(50)
    assert bucket.try_take(500) == 5.0
    clock.advance(5)
    assert bucket.try_take(500) == 0.0
    assert bucket.tokens() == -400.0


def test_invalid_bucket_parameters() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 1.0)
    with pytest.raises(ValueError):
        TokenBucket(10, 0.0)


# --- ConcurrencyCounter ------------------------------------------------------------------


def test_counter_counts_and_refuses_without_queueing() -> None:
    counter = ConcurrencyCounter(2)
    assert counter.try_enter() and counter.try_enter()
    assert not counter.try_enter()
    counter.leave()
    assert counter.try_enter()
    assert counter.in_flight == 2


def test_counter_zero_means_unlimited_but_counted() -> None:
    counter = ConcurrencyCounter(0)
    for _ in range(1000):
        assert counter.try_enter()
    assert counter.in_flight == 1000


def test_counter_leave_without_enter_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        ConcurrencyCounter(1).leave()


# --- RateLimiter -------------------------------------------------------------------------


def test_limiter_rpm_rejection_names_the_limit_and_retry_after() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    for _ in range(2):
        take_slot(limiter, rpm=2).release()
    error = rejection(limiter, rpm=2)
    assert error.retry_after_s == 30.0
    assert "2 rpm" in error.message and "key" in error.message
    assert error.status == 429 and error.code == "rate_limit_exceeded"
    assert error.headers() == {"retry-after": "30"}
    clock.advance(30)
    take_slot(limiter, rpm=2)


def test_concurrency_101st_rejected_then_served_after_one_release() -> None:
    limiter = RateLimiter(clock=FakeClock())
    slots = [take_slot(limiter, concurrency=100) for _ in range(100)]
    error = rejection(limiter, concurrency=100)
    assert "concurrency" in error.message and "100" in error.message
    assert error.retry_after_s == CONCURRENCY_RETRY_AFTER_S
    slots[0].release()
    take_slot(limiter, concurrency=100)
    assert limiter.in_flight("k1") == 100


def test_request_rejected_for_concurrency_takes_no_rpm_token() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    first = take_slot(limiter, rpm=2, concurrency=1)
    for _ in range(5):
        rejection(limiter, rpm=2, concurrency=1)
    first.release()
    take_slot(limiter, rpm=2, concurrency=1)  # the second RPM token is still there
    assert "rpm" in rejection(limiter, rpm=2, concurrency=2).message


def test_request_rejected_for_tpm_takes_no_rpm_token() -> None:
    limiter = RateLimiter(clock=FakeClock())
    take_slot(limiter, rpm=2, tpm=1000, estimated_tokens=900).release()
    error = rejection(limiter, rpm=2, tpm=1000, estimated_tokens=500)
    assert "1000 tpm" in error.message
    assert error.retry_after_s == pytest.approx(400 / (1000 / 60))
    take_slot(limiter, rpm=2, tpm=1000, estimated_tokens=100)  # RPM token left for this one


def test_key_rejection_consumes_nothing_from_the_account() -> None:
    limiter = RateLimiter(clock=FakeClock())
    account: dict[str, int | str] = {"account_id": "acct", "account_rpm": 3}
    take_slot(limiter, "a", rpm=1, **account)
    for _ in range(5):
        rejection(limiter, "a", rpm=1, **account)
    take_slot(limiter, "b", **account)
    take_slot(limiter, "c", **account)
    error = rejection(limiter, "d", **account)
    assert "account" in error.message and "3 rpm" in error.message


def test_account_concurrency_is_shared_across_keys() -> None:
    limiter = RateLimiter(clock=FakeClock())
    account: dict[str, int | str] = {"account_id": "acct", "account_concurrency": 2}
    a = take_slot(limiter, "a", rpm=10, **account)
    take_slot(limiter, "b", rpm=10, **account)
    error = rejection(limiter, "c", rpm=10, **account)
    assert "concurrency" in error.message and "account" in error.message
    a.release()
    take_slot(limiter, "c", rpm=10, **account)


def test_account_rejection_consumes_nothing_from_the_key() -> None:
    limiter = RateLimiter(clock=FakeClock())
    blocker = take_slot(limiter, "other", account_id="acct", account_concurrency=1)
    for _ in range(3):
        rejection(limiter, "a", rpm=1, account_id="acct", account_concurrency=1)
    blocker.release()
    take_slot(limiter, "a", rpm=1, account_id="acct", account_concurrency=1)


def test_release_corrects_tpm_to_measured_tokens() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    # The key refills 10 tokens/s.
    limits: dict[str, int | str] = {"tpm": 600, "account_id": "acct", "account_tpm": 6000}
    take_slot(limiter, estimated_tokens=100, **limits).release(measured_tokens=1100)
    # Key bucket: 600 - 1100 = -500 of debt: even a 5-token request waits 50.5 s.
    error = rejection(limiter, estimated_tokens=5, **limits)
    assert error.retry_after_s == 50.5
    assert "600 tpm" in error.message
    clock.advance(50.5)
    take_slot(limiter, estimated_tokens=5, **limits)


def test_release_refunds_an_overestimate() -> None:
    limiter = RateLimiter(clock=FakeClock())
    take_slot(limiter, tpm=1000, estimated_tokens=1000).release(measured_tokens=0)
    take_slot(limiter, tpm=1000, estimated_tokens=1000)


def test_release_without_measurement_keeps_the_estimate() -> None:
    limiter = RateLimiter(clock=FakeClock())
    take_slot(limiter, tpm=1000, estimated_tokens=1000).release()
    assert "tpm" in rejection(limiter, tpm=1000, estimated_tokens=1).message


def test_release_is_idempotent() -> None:
    limiter = RateLimiter(clock=FakeClock())
    slot = take_slot(limiter, tpm=1000, concurrency=1, estimated_tokens=100)
    other = take_slot(limiter, "k2", concurrency=1)
    slot.release(measured_tokens=600)
    slot.release(measured_tokens=0)
    assert slot.released
    assert limiter.in_flight("k1") == 0
    assert limiter.in_flight("k2") == 1
    # The second release refunded nothing: 400 tokens left, not 1000.
    assert "tpm" in rejection(limiter, tpm=1000, concurrency=1, estimated_tokens=500).message
    other.release()


def test_unlimited_key_keeps_no_state() -> None:
    limiter = RateLimiter(clock=FakeClock())
    for _ in range(1000):
        take_slot(limiter, estimated_tokens=10**6)
    assert not limiter.is_tracked("k1")


def test_changed_limits_apply_in_place() -> None:
    limiter = RateLimiter(clock=FakeClock())
    running = take_slot(limiter, rpm=100, concurrency=5)
    for _ in range(3):
        take_slot(limiter, rpm=100, concurrency=5)
    # Lowered to 3 in flight: the 4 already running still count.
    assert "concurrency" in rejection(limiter, rpm=100, concurrency=3).message
    running.release()
    assert "concurrency" in rejection(limiter, rpm=100, concurrency=3).message
    # Lowered rpm: the 4 requests already taken are kept against the new capacity.
    assert "rpm" in rejection(limiter, rpm=4, concurrency=10).message


def test_sweep_drops_idle_state_and_keeps_busy_state() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, idle_after_s=60)
    take_slot(limiter, "idle", rpm=60, account_id="quiet", account_rpm=60).release()
    busy = take_slot(limiter, "busy", tpm=600, estimated_tokens=10)
    take_slot(limiter, "indebted", tpm=60, estimated_tokens=10).release(measured_tokens=10_000)
    assert limiter.sweep() == 0  # nothing idle yet
    clock.advance(61)
    assert limiter.sweep() == 2
    assert not limiter.is_tracked("idle")
    assert not limiter.is_account_tracked("quiet")
    assert limiter.is_tracked("busy")  # in flight: its release must still correct TPM
    assert limiter.is_tracked("indebted")  # debt must not be forgiven by a sweep
    busy.release(measured_tokens=10)
    assert limiter.sweep(clock.now + 1) == 1
    assert not limiter.is_tracked("busy")


def test_sweep_keeps_recently_used_state_even_if_full() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock, idle_after_s=60)
    take_slot(limiter, rpm=6000).release()
    clock.advance(30)  # refilled long ago, but used recently
    assert limiter.sweep() == 0
    assert limiter.is_tracked("k1")


def test_forget_drops_state_and_late_release_is_harmless() -> None:
    limiter = RateLimiter(clock=FakeClock())
    slot = take_slot(limiter, rpm=1, concurrency=1)
    limiter.forget("k1")
    limiter.forget("never-seen")
    assert not limiter.is_tracked("k1")
    take_slot(limiter, rpm=1, concurrency=1)  # fresh state
    slot.release()
    assert limiter.in_flight("k1") == 1


def test_rejection_reports_the_longest_wait_across_key_and_account() -> None:
    limiter = RateLimiter(clock=FakeClock())
    account: dict[str, int | str] = {"account_id": "acct", "account_rpm": 1}
    take_slot(limiter, rpm=2, **account)
    error = rejection(limiter, rpm=2, **account)
    # Key: 1 token left, no wait. Account: empty, 60 s until its next token.
    assert error.retry_after_s == 60.0
    assert "account" in error.message and "1 rpm" in error.message
