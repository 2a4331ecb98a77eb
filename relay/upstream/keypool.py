"""A provider's pool of upstream keys: pick the least-busy healthy key.

A key answered with 429 cools down (for the upstream's ``retry-after`` when given);
a key answered with 401/403 leaves the rotation for good, and the log names it by its
position in the pool, never by its value.

A provider may declare each key's own upstream quota (``key_rpm``, ``key_tpm``): every key
then has two token buckets, and ``acquire`` skips a key that would exceed either, so
routing stays under the upstream's limits instead of learning them from 429s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from relay.upstream.redact import KeyRedactor

__all__ = ["OPERATOR_ACTIONS", "OPERATOR_DISABLED", "KeyPool", "UpstreamKey", "operator_action"]

log = logging.getLogger(__name__)

# Bounds on an upstream's retry-after: a missing or silly value must neither hammer
# the upstream nor park a key for hours.
DEFAULT_COOLDOWN_S = 1.0
MAX_COOLDOWN_S = 300.0
OPERATOR_DISABLED = "disabled by the operator"
# The audit action of an operator's enable or disable (cluster instances replay them).
OPERATOR_ACTIONS = {"upstream.enable": True, "upstream.disable": False}


def operator_action(*, enable: bool) -> str:
    return "upstream.enable" if enable else "upstream.disable"


class _Quota:
    """A per-minute token bucket (full at start), for one key's upstream RPM or TPM."""

    __slots__ = ("capacity", "level", "rate", "updated")

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.level = float(per_minute)
        self.rate = per_minute / 60.0
        self.updated = now

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def can_take(self, tokens: float, now: float) -> bool:
        self._refill(now)
        return self.level >= min(tokens, self.capacity)  # a huge request waits for a full bucket

    def take(self, tokens: float) -> None:
        self.level -= min(tokens, self.capacity)

    def wait_s(self, tokens: float, now: float) -> float:
        self._refill(now)
        return max(0.0, (min(tokens, self.capacity) - self.level) / self.rate)


class UpstreamKey:
    __slots__ = ("index", "secret", "in_flight", "cooldown_until", "disabled_reason", "quotas")

    def __init__(self, index: int, secret: str):
        self.index = index
        self.secret = secret
        self.in_flight = 0
        self.cooldown_until = 0.0
        self.disabled_reason: str | None = None
        # (requests, tokens) buckets when the provider declares key_rpm / key_tpm.
        self.quotas: tuple[_Quota | None, _Quota | None] = (None, None)

    def set_by_operator(self, *, enable: bool) -> None:
        """Enabling clears a rejection or a cool-down; disabling takes the key out of
        rotation until it is enabled again."""
        if enable:
            self.disabled_reason = None
            self.cooldown_until = 0.0
        else:
            self.disabled_reason = OPERATOR_DISABLED

    def within_quota(self, tokens: int, now: float) -> bool:
        rpm, tpm = self.quotas
        return (rpm is None or rpm.can_take(1, now)) and (tpm is None or tpm.can_take(tokens, now))

    def quota_wait_s(self, tokens: int, now: float) -> float:
        rpm, tpm = self.quotas
        waits = [0.0]
        if rpm is not None:
            waits.append(rpm.wait_s(1, now))
        if tpm is not None:
            waits.append(tpm.wait_s(tokens, now))
        return max(waits)

    def __repr__(self) -> str:  # never show the secret, even in a debugger or traceback
        return f"UpstreamKey(#{self.index})"


class KeyPool:
    def __init__(
        self,
        provider: str,
        secrets: Iterable[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        key_rpm: int = 0,
        key_tpm: int = 0,
    ):
        self.provider = provider
        self.keys = [UpstreamKey(i, secret) for i, secret in enumerate(secrets, start=1)]
        # Searches upstream bodies and ids for these keys (relay never passes one on).
        self.redactor = KeyRedactor([key.secret for key in self.keys])
        self._clock = clock
        now = clock()
        for key in self.keys:
            key.quotas = (
                _Quota(key_rpm, now) if key_rpm else None,
                _Quota(key_tpm, now) if key_tpm else None,
            )

    @property
    def configured(self) -> bool:
        return bool(self.keys)

    @property
    def has_usable_key(self) -> bool:
        """Some key is still in rotation (it may be cooling down)."""
        # A loop, not ``any(generator)``: asked on every request, and a generator left
        # at its first key (the usual answer) is closed with a GeneratorExit each time.
        for key in self.keys:
            if key.disabled_reason is None:
                return True
        return False

    def acquire(
        self, exclude: frozenset[int] | set[int] = frozenset(), tokens: int = 0
    ) -> UpstreamKey | None:
        """The healthy key with the fewest requests in flight that has room in its quota
        for one request of ``tokens`` (estimated), or None if none is usable now."""
        now = self._clock()
        best: UpstreamKey | None = None
        for key in self.keys:
            if key.disabled_reason is not None or key.cooldown_until > now:
                continue
            if key.index in exclude or not key.within_quota(tokens, now):
                continue
            if best is None or key.in_flight < best.in_flight:
                best = key
        if best is not None:
            best.in_flight += 1
            rpm, tpm = best.quotas
            if rpm is not None:
                rpm.take(1)
            if tpm is not None:
                tpm.take(tokens)
        return best

    def release(self, key: UpstreamKey) -> None:
        key.in_flight -= 1

    def cool_down(self, key: UpstreamKey, retry_after: str | None) -> float:
        seconds = _parse_retry_after(retry_after)
        key.cooldown_until = max(key.cooldown_until, self._clock() + seconds)
        log.warning(
            "provider %s key #%d rate-limited upstream; cooling down %.1fs",
            self.provider,
            key.index,
            seconds,
        )
        return seconds

    def disable(self, key: UpstreamKey, status: int) -> None:
        if key.disabled_reason is None:
            key.disabled_reason = f"upstream answered {status}"
            log.error(
                "provider %s key #%d rejected by upstream (HTTP %d); taken out of rotation",
                self.provider,
                key.index,
                status,
            )

    def seconds_until_ready(self, tokens: int = 0) -> float | None:
        """How long until a cooling (or over-quota) key is usable again (None: no key will be)."""
        now = self._clock()
        waits = [
            max(k.cooldown_until - now, k.quota_wait_s(tokens, now))
            for k in self.keys
            if k.disabled_reason is None
        ]
        return max(0.0, min(waits)) if waits else None

    def adopt_state(self, old: KeyPool) -> int:
        """Take over each surviving key's operator and health state from the pool a reload
        replaces; returns how many keys were matched.

        Keys are matched by value (in memory only, never logged), so a key that moved
        position keeps its state and a key that was removed takes its state with it. An
        operator's disable, an upstream rejection, a cool-down and the quota buckets (when
        the quota did not change) survive; requests in flight stay counted on the old pool,
        which releases them.
        """
        by_secret: dict[str, list[UpstreamKey]] = {}
        for key in old.keys:
            by_secret.setdefault(key.secret, []).append(key)
        matched = 0
        for key in self.keys:
            candidates = by_secret.get(key.secret)
            if not candidates:
                continue
            previous = candidates.pop(0)
            key.disabled_reason = previous.disabled_reason
            key.cooldown_until = previous.cooldown_until
            key.quotas = (
                _same_quota(key.quotas[0], previous.quotas[0]),
                _same_quota(key.quotas[1], previous.quotas[1]),
            )
            matched += 1
        return matched

    def health(self) -> list[dict[str, object]]:
        now = self._clock()
        return [
            {
                "key": f"#{k.index}",
                "in_flight": k.in_flight,
                "cooling_down_s": round(max(0.0, k.cooldown_until - now), 3),
                "disabled": k.disabled_reason,
            }
            for k in self.keys
        ]


def _same_quota(new: _Quota | None, old: _Quota | None) -> _Quota | None:
    """The old bucket (with what it has spent) when the quota is unchanged, else the new one."""
    if new is not None and old is not None and new.capacity == old.capacity:
        return old
    return new


def _parse_retry_after(value: str | None) -> float:
    if not value:
        return DEFAULT_COOLDOWN_S
    try:
        seconds = float(value)
    except ValueError:
        return DEFAULT_COOLDOWN_S  # an HTTP date is rare from LLM APIs; a default is safe
    return min(MAX_COOLDOWN_S, max(0.0, seconds)) or DEFAULT_COOLDOWN_S
