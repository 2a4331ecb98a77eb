"""In-memory rate limits: requests/minute, tokens/minute and in-flight requests, per key
and optionally per account.

Everything runs on the single asyncio event loop, so plain counters need no locks. A
request gets a ``LimitSlot`` only if EVERY limit allows it, and only then is anything
consumed: a refused request costs no budget anywhere (unlike LiteLLM #39309, where a request
refused by one limit still drained another). Taking the slot is one step of the gate's
admission (``relay.admission.gate``), not the whole of it.

Tokens per minute are charged when the slot is taken, from an estimate, and corrected to the
measured count on release; a request that used more than estimated leaves the bucket in debt,
which later requests wait out.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from relay.errors import RateLimited

__all__ = [
    "CONCURRENCY_RETRY_AFTER_S",
    "ConcurrencyCounter",
    "LimitSlot",
    "RateLimiter",
    "TokenBucket",
]

Clock = Callable[[], float]

# A concurrency rejection has no refill time to report; a short hint keeps clients from
# hammering while still retrying soon.
CONCURRENCY_RETRY_AFTER_S = 1.0


class TokenBucket:
    """``capacity`` tokens, refilled continuously at ``refill_per_s``; starts full.

    A request for more than ``capacity`` is treated as a request for the whole bucket (then
    leaves debt): otherwise it could never pass at all.
    """

    __slots__ = ("_clock", "_tokens", "_updated_at", "capacity", "refill_per_s")

    def __init__(self, capacity: float, refill_per_s: float, clock: Clock = time.monotonic):
        if capacity <= 0 or refill_per_s <= 0:
            raise ValueError("capacity and refill_per_s must be positive")
        self.capacity = capacity
        self.refill_per_s = refill_per_s
        self._clock = clock
        self._tokens = float(capacity)
        self._updated_at = clock()

    @classmethod
    def per_minute(cls, limit: int, clock: Clock = time.monotonic) -> TokenBucket:
        return cls(limit, limit / 60.0, clock)

    def _refill(self, now: float) -> None:
        elapsed = now - self._updated_at
        if elapsed > 0:
            self._tokens = min(self.capacity, self._tokens + elapsed * self.refill_per_s)
            self._updated_at = now

    def tokens(self, now: float | None = None) -> float:
        """Tokens available now; negative while in debt."""
        self._refill(self._clock() if now is None else now)
        return self._tokens

    def wait_time(self, n: float, now: float) -> float:
        """Seconds until ``n`` tokens are available (0.0 if they are now); consumes nothing."""
        self._refill(now)
        missing = min(n, self.capacity) - self._tokens
        return missing / self.refill_per_s if missing > 0 else 0.0

    def take(self, n: float, now: float) -> None:
        """Consume ``n`` unconditionally (callers check ``wait_time`` first)."""
        self._refill(now)
        self._tokens -= n

    def try_take(self, n: float) -> float:
        """Take ``n`` and return 0.0, or take nothing and return the seconds to wait."""
        now = self._clock()
        wait = self.wait_time(n, now)
        if wait == 0.0:
            self._tokens -= n
        return wait

    def adjust(self, delta: float) -> None:
        """Charge ``delta`` more tokens (may go into debt), or give back ``-delta``."""
        self._refill(self._clock())
        self._tokens = min(self.capacity, self._tokens - delta)

    def refund(self, n: float) -> None:
        self.adjust(-n)

    def is_full(self, now: float) -> bool:
        self._refill(now)
        return self._tokens >= self.capacity

    def reconfigure(self, capacity: float, refill_per_s: float, now: float) -> None:
        """Apply new limits, keeping what was already spent (and any debt)."""
        self._refill(now)
        spent = self.capacity - self._tokens
        self.capacity = capacity
        self.refill_per_s = refill_per_s
        self._tokens = capacity - spent


class ConcurrencyCounter:
    """Counts in-flight requests against a limit (0 = unlimited, still counted); never queues.

    A counter, not an ``asyncio.Semaphore``: a limit must answer at once (429, not wait),
    and on one event loop with no ``await`` between check and increment a counter is already
    race-free; a semaphore would add a waiter queue that is never used.
    """

    __slots__ = ("in_flight", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("limit must be 0 (unlimited) or positive")
        self.limit = limit
        self.in_flight = 0

    def is_open(self) -> bool:
        return not self.limit or self.in_flight < self.limit

    def try_enter(self) -> bool:
        if not self.is_open():
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        if self.in_flight <= 0:
            raise RuntimeError("ConcurrencyCounter.leave() without a matching enter")
        self.in_flight -= 1


class _LimitState:
    """One key's (or account's) buckets and in-flight counter.

    Buckets are ``None`` where the limit is 0 (unlimited). The counter always exists so that
    in-flight requests are counted even without a concurrency limit: ``sweep`` must not drop
    state that an unreleased slot will still correct.
    """

    __slots__ = ("clock", "concurrency", "last_used_at", "limits", "rpm", "tpm")

    def __init__(self, limits: tuple[int, int, int], clock: Clock, now: float) -> None:
        self.clock = clock
        self.limits = (0, 0, 0)
        self.rpm: TokenBucket | None = None
        self.tpm: TokenBucket | None = None
        self.concurrency = ConcurrencyCounter(0)
        self.last_used_at = now
        self.configure(limits, now)

    def configure(self, limits: tuple[int, int, int], now: float) -> None:
        rpm, tpm, concurrency = limits
        self.rpm = self._bucket(self.rpm, rpm, now)
        self.tpm = self._bucket(self.tpm, tpm, now)
        self.concurrency.limit = concurrency  # keeps the in-flight count
        self.limits = limits

    def _bucket(self, bucket: TokenBucket | None, limit: int, now: float) -> TokenBucket | None:
        if limit <= 0:
            return None
        if bucket is None:
            return TokenBucket.per_minute(limit, self.clock)
        bucket.reconfigure(limit, limit / 60.0, now)
        return bucket

    def is_idle(self, now: float, idle_after_s: float) -> bool:
        """True if dropping this state changes nothing: a fresh one would be identical."""
        return (
            now - self.last_used_at >= idle_after_s
            and self.concurrency.in_flight == 0
            and (self.rpm is None or self.rpm.is_full(now))
            and (self.tpm is None or self.tpm.is_full(now))
        )


class LimitSlot:
    """A request's place within its key's (and account's) rate limits: the RPM and TPM
    tokens it took and its in-flight count. ``release`` it exactly once when done."""

    __slots__ = ("_account", "_estimated_tokens", "_key", "_released")

    def __init__(
        self, key: _LimitState | None, account: _LimitState | None, estimated_tokens: int
    ) -> None:
        self._key = key
        self._account = account
        self._estimated_tokens = estimated_tokens
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self, measured_tokens: int | None = None) -> None:
        """Leave the in-flight counts and correct TPM from the estimate to the measured count.

        ``measured_tokens=None`` keeps the estimate (usage unknown); pass 0 for a request that
        consumed nothing upstream. A second call does nothing.
        """
        if self._released:
            return
        self._released = True
        delta = None if measured_tokens is None else measured_tokens - self._estimated_tokens
        for state in (self._key, self._account):
            if state is None:
                continue
            state.concurrency.leave()
            if delta and state.tpm is not None:
                state.tpm.adjust(delta)


_NO_LIMITS = (0, 0, 0)


class RateLimiter:
    """Per-key and per-account limits for the request path; O(1) ``take_slot`` and ``release``.

    State appears on a key's first request and is dropped by ``sweep`` once the key has been
    idle for ``idle_after_s`` with full buckets and nothing in flight, so memory follows the
    active keys. Changed limits passed to ``take_slot`` are applied in place (spent budget and
    in-flight counts carry over); ``forget`` drops a key's state outright (revoke).
    """

    __slots__ = ("_accounts", "_clock", "_keys", "idle_after_s")

    def __init__(self, *, clock: Clock = time.monotonic, idle_after_s: float = 300.0) -> None:
        self._clock = clock
        self.idle_after_s = idle_after_s
        self._keys: dict[str, _LimitState] = {}
        self._accounts: dict[str, _LimitState] = {}

    def take_slot(
        self,
        key_id: str,
        *,
        rpm: int,
        tpm: int,
        concurrency: int,
        estimated_tokens: int,
        account_id: str | None = None,
        account_rpm: int = 0,
        account_tpm: int = 0,
        account_concurrency: int = 0,
    ) -> LimitSlot:
        """The request's slot, or ``RateLimited`` (429); 0 means unlimited for any limit."""
        now = self._clock()
        key = self._state(self._keys, key_id, (rpm, tpm, concurrency), now)
        account = None
        if account_id is not None:
            limits = (account_rpm, account_tpm, account_concurrency)
            account = self._state(self._accounts, account_id, limits, now)
        # Check everything before consuming anything.
        _check_concurrency(key, "key")
        _check_concurrency(account, "account")
        key_wait, key_bucket = _bucket_wait(key, estimated_tokens, now)
        account_wait, account_bucket = _bucket_wait(account, estimated_tokens, now)
        if key_wait > 0.0 or account_wait > 0.0:
            # Report the longest wait: a client that waits it out passes every bucket.
            if account_wait > key_wait and account is not None:
                raise _bucket_limited(account, account_bucket, "account", account_wait)
            assert key is not None  # key_wait > 0 needs a key bucket
            raise _bucket_limited(key, key_bucket, "key", key_wait)
        _consume(key, estimated_tokens, now)
        _consume(account, estimated_tokens, now)
        return LimitSlot(key, account, estimated_tokens)

    def _state(
        self,
        states: dict[str, _LimitState],
        name: str,
        limits: tuple[int, int, int],
        now: float,
    ) -> _LimitState | None:
        state = states.get(name)
        if state is None:
            if limits == _NO_LIMITS:
                return None
            state = states[name] = _LimitState(limits, self._clock, now)
        elif state.limits != limits:
            state.configure(limits, now)
        state.last_used_at = now
        return state

    def sweep(self, now: float | None = None) -> int:
        """Drop idle state; returns how many entries went. Call it every minute or so."""
        if now is None:
            now = self._clock()
        dropped = 0
        for states in (self._keys, self._accounts):
            idle = [name for name, s in states.items() if s.is_idle(now, self.idle_after_s)]
            for name in idle:
                del states[name]
            dropped += len(idle)
        return dropped

    def forget(self, key_id: str) -> None:
        """Drop a key's state (revoked or re-limited). Slots in flight still release."""
        self._keys.pop(key_id, None)

    def forget_account(self, account_id: str) -> None:
        self._accounts.pop(account_id, None)

    def is_tracked(self, key_id: str) -> bool:
        return key_id in self._keys

    def is_account_tracked(self, account_id: str) -> bool:
        return account_id in self._accounts

    def in_flight(self, key_id: str) -> int:
        state = self._keys.get(key_id)
        return 0 if state is None else state.concurrency.in_flight


def _check_concurrency(state: _LimitState | None, scope: str) -> None:
    if state is None or state.concurrency.is_open():
        return
    raise RateLimited(
        f"concurrency limit reached for this {scope}: "
        f"{state.concurrency.limit} requests already in flight",
        retry_after_s=CONCURRENCY_RETRY_AFTER_S,
    )


def _bucket_wait(state: _LimitState | None, estimated_tokens: int, now: float) -> tuple[float, str]:
    """The longest wait among this state's buckets, and which bucket ("rpm" or "tpm")."""
    if state is None:
        return 0.0, ""
    wait, which = 0.0, ""
    if state.rpm is not None:
        wait, which = state.rpm.wait_time(1, now), "rpm"
    if state.tpm is not None:
        tpm_wait = state.tpm.wait_time(estimated_tokens, now)
        if tpm_wait > wait:
            wait, which = tpm_wait, "tpm"
    return wait, which


def _bucket_limited(state: _LimitState, which: str, scope: str, wait: float) -> RateLimited:
    # Built only on refusal, so requests that pass format no strings.
    if which == "rpm":
        limit = f"requests per minute limit ({state.limits[0]} rpm)"
    else:
        limit = f"tokens per minute limit ({state.limits[1]} tpm)"
    return RateLimited(
        f"{limit} reached for this {scope}; retry after {wait:.2f}s", retry_after_s=wait
    )


def _consume(state: _LimitState | None, estimated_tokens: int, now: float) -> None:
    if state is None:
        return
    if state.rpm is not None:
        state.rpm.take(1, now)
    if state.tpm is not None:
        state.tpm.take(estimated_tokens, now)
    state.concurrency.in_flight += 1  # checked open above, with no await in between
