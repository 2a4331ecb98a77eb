"""The wallet's running totals per account and per key, in integer micro-USD.

What is in flight against each (Σ held, Σ worst case), recent spend in two time windows
(for the strict-check threshold), spend caps over a lifetime or a calendar period, and an
account's balance and credit limit. Plain state: every decision is ``Wallet``'s
(docs/architecture.md §3.4).
"""

from __future__ import annotations

from relay.money.budget import PeriodSpend
from relay.money.records import AccountMode

__all__ = ["AccountExposure", "Capped", "Exposure", "KeyExposure", "RecentSpend"]


class RecentSpend:
    """Spend in the current and the previous time window (integers, two buckets)."""

    __slots__ = ("_current", "_previous", "_window")

    def __init__(self) -> None:
        self._window = 0
        self._current = 0
        self._previous = 0

    def _roll(self, window: int) -> None:
        if window != self._window:
            self._previous = self._current if window == self._window + 1 else 0
            self._current = 0
            self._window = window

    def add(self, amount_micros: int, window: int) -> None:
        self._roll(window)
        self._current += amount_micros

    def total(self, window: int) -> int:
        self._roll(window)
        return self._current + self._previous


class Exposure:
    """What is in flight against an account or a key: Σ held and Σ worst case."""

    __slots__ = ("held", "recent", "worst")

    def __init__(self) -> None:
        self.held = 0
        self.worst = 0
        self.recent = RecentSpend()


class Capped(Exposure):
    """A spend cap (0 = none) on lifetime spend, or on the current period's with a window."""

    __slots__ = ("cap", "spent", "window")

    def __init__(self, cap: int, spent: int) -> None:
        super().__init__()
        self.cap = cap
        self.spent = spent  # lifetime charges
        self.window: PeriodSpend | None = None

    def cap_headroom(self) -> int | None:
        if self.cap == 0:
            return None
        used = self.spent if self.window is None else self.window.spent
        return self.cap - used - self.worst

    def add_spend(self, amount_micros: int) -> None:
        self.spent += amount_micros
        if self.window is not None:
            self.window.spent += amount_micros


class AccountExposure(Capped):
    __slots__ = ("balance", "credit_limit", "mode", "references")

    def __init__(self, mode: AccountMode, credit_limit: int, balance: int) -> None:
        super().__init__(0, 0)
        self.mode: AccountMode = mode
        self.credit_limit = credit_limit
        self.balance = balance
        self.references: set[str] = set()

    def headroom(self) -> int:
        """What is left if every in-flight request costs its worst case."""
        return self.balance + self.credit_limit - self.worst


class KeyExposure(Capped):
    __slots__ = ("account_id",)

    def __init__(self, account_id: str, spend_cap: int, spent: int) -> None:
        super().__init__(spend_cap, spent)
        self.account_id = account_id

    @property
    def spend_cap(self) -> int:
        return self.cap

    def headroom(self) -> int | None:
        return self.cap_headroom()
