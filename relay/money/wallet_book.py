"""The wallet's book: the accounts and keys it has loaded, their limits and budgets, and
what each looks like from outside (balances, key spend, account budgets).

``Wallet`` (relay.money.wallet) builds on this book to move money: ledger rows and holds.
The book only records and shows; it places nothing and charges nothing. Budget periods
roll here, by the book's calendar and wall clock, whenever a cap is read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from relay.money.amounts import check_limit, check_micros, check_signed_micros
from relay.money.budget import BudgetCalendar, BudgetPeriod, PeriodSpend
from relay.money.exposure import AccountExposure, Capped, KeyExposure
from relay.money.records import AccountMode, BalanceView, BudgetView, KeySpendView

__all__ = ["WalletBook", "unix_ms"]


def unix_ms() -> int:
    """The wall clock a wallet dates its rows and budget periods by, unless one is injected."""
    return time.time_ns() // 1_000_000


class WalletBook:
    """Every loaded account and key, in memory; synchronous like the wallet itself."""

    def __init__(
        self,
        *,
        wall_clock_ms: Callable[[], int] = unix_ms,
        calendar: BudgetCalendar | None = None,
    ) -> None:
        self._wall_clock_ms = wall_clock_ms
        self.calendar = calendar or BudgetCalendar()
        self._accounts: dict[str, AccountExposure] = {}
        self._keys: dict[str, KeyExposure] = {}

    # -- loading and limits -------------------------------------------------------------

    def load_account(
        self,
        account_id: str,
        *,
        mode: AccountMode,
        credit_limit_micros: int,
        balance_micros: int,
        references: Iterable[str] = (),
    ) -> None:
        """Add an account: ``balance_micros`` = sum of its ledger rows, ``references`` = the
        references of its credit/refund rows (so a replayed top-up is refused)."""
        if account_id in self._accounts:
            raise ValueError(f"account {account_id!r} is already loaded")
        check_limit(mode, credit_limit_micros)
        check_signed_micros("balance_micros", balance_micros)
        account = AccountExposure(mode, credit_limit_micros, balance_micros)
        account.references.update(references)
        self._accounts[account_id] = account

    def load_key(
        self, key_id: str, account_id: str, *, spend_cap_micros: int, spent_micros: int
    ) -> None:
        """Add a key: ``spent_micros`` = sum of its charges, ``spend_cap_micros`` 0 = no cap."""
        if key_id in self._keys:
            raise ValueError(f"key {key_id!r} is already loaded")
        self._account(account_id)
        check_micros("spend_cap_micros", spend_cap_micros)
        check_micros("spent_micros", spent_micros)
        self._keys[key_id] = KeyExposure(account_id, spend_cap_micros, spent_micros)

    def has_account(self, account_id: str) -> bool:
        return account_id in self._accounts

    def has_key(self, key_id: str) -> bool:
        return key_id in self._keys

    def set_credit_limit(
        self, account_id: str, credit_limit_micros: int, *, mode: AccountMode | None = None
    ) -> None:
        """Change an account's limit (and mode). Binds every hold placed from now on.

        Requests already in flight were held under the old limit and are not cancelled:
        lowering a limit can let them finish below the new ``−credit_limit`` (never below
        the old one).
        """
        account = self._account(account_id)
        new_mode = account.mode if mode is None else mode
        check_limit(new_mode, credit_limit_micros)
        account.mode = new_mode
        account.credit_limit = credit_limit_micros

    def set_spend_cap(self, key_id: str, spend_cap_micros: int) -> None:
        """Change a key's cap (0 = none); in-flight requests finish as for ``set_credit_limit``."""
        key = self._key(key_id)
        check_micros("spend_cap_micros", spend_cap_micros)
        key.cap = spend_cap_micros

    def set_key_budget_period(
        self, key_id: str, period: BudgetPeriod | None, period_spent_micros: int = 0
    ) -> None:
        """Make a key's cap reset each ``period`` (None: lifetime); ``period_spent_micros`` is
        what the key spent since the current period began (the caller sums the ledger)."""
        self._set_window(self._key(key_id), period, period_spent_micros)

    def set_account_budget(
        self,
        account_id: str,
        budget_micros: int,
        period: BudgetPeriod | None,
        *,
        spent_micros: int = 0,
        period_spent_micros: int = 0,
    ) -> None:
        """An account-wide spend cap (0 = none), lifetime or per period, beside its balance.

        ``spent_micros`` is the account's lifetime charges, ``period_spent_micros`` those of
        the current period."""
        account = self._account(account_id)
        check_micros("budget_micros", budget_micros)
        account.cap = budget_micros
        account.spent = spent_micros
        self._set_window(account, period, period_spent_micros)

    def period_bounds(self, period: BudgetPeriod) -> tuple[int, int]:
        """[start, end) in unix ms of the current ``period`` by this wallet's clock."""
        return self.calendar.bounds(period, self._wall_clock_ms())

    def _set_window(
        self, capped: Capped, period: BudgetPeriod | None, period_spent_micros: int
    ) -> None:
        check_micros("period_spent_micros", period_spent_micros)
        if period is None:
            capped.window = None
        else:
            capped.window = PeriodSpend.starting(
                self.calendar, period, self._wall_clock_ms(), period_spent_micros
            )

    def _roll(self, capped: Capped) -> None:
        if capped.window is not None:
            capped.window.roll(self.calendar, self._wall_clock_ms())

    # -- views ----------------------------------------------------------------------------

    def snapshot(self, account_id: str) -> BalanceView:
        account = self._account(account_id)
        return BalanceView(
            balance_micros=account.balance,
            held_micros=account.held,
            available_micros=account.balance + account.credit_limit - account.held,
            credit_limit_micros=account.credit_limit,
            mode=account.mode,
        )

    def key_snapshot(self, key_id: str) -> KeySpendView:
        key = self._key(key_id)
        self._roll(key)
        window = key.window
        used = key.spent if window is None else window.spent
        capped = key.spend_cap != 0
        return KeySpendView(
            key_id=key_id,
            account_id=key.account_id,
            spent_micros=key.spent,
            held_micros=key.held,
            spend_cap_micros=key.spend_cap,
            remaining_micros=key.spend_cap - used - key.held if capped else None,
            budget_period=None if window is None else window.period,
            period_spent_micros=used,
            resets_at_ms=None if window is None else window.end_ms,
        )

    def account_budget(self, account_id: str) -> BudgetView:
        """The account's own spend budget (``budget_micros`` 0 = none)."""
        account = self._account(account_id)
        self._roll(account)
        window = account.window
        used = account.spent if window is None else window.spent
        return BudgetView(
            budget_micros=account.cap,
            budget_period=None if window is None else window.period,
            spent_micros=used,
            remaining_micros=account.cap - used - account.held if account.cap else None,
            resets_at_ms=None if window is None else window.end_ms,
        )

    def totals(self) -> tuple[int, int, int]:
        """(Σ balances, Σ held, number of accounts) over every loaded account, for metrics."""
        balance = held = 0
        for account in self._accounts.values():
            balance += account.balance
            held += account.held
        return balance, held, len(self._accounts)

    # -- lookups --------------------------------------------------------------------------

    def _account(self, account_id: str) -> AccountExposure:
        try:
            return self._accounts[account_id]
        except KeyError:
            raise KeyError(f"account {account_id!r} is not loaded in the wallet") from None

    def _key(self, key_id: str) -> KeyExposure:
        try:
            return self._keys[key_id]
        except KeyError:
            raise KeyError(f"key {key_id!r} is not loaded in the wallet") from None

    def _key_of(self, account_id: str, key_id: str | None) -> KeyExposure | None:
        if key_id is None:
            return None
        key = self._key(key_id)
        if key.account_id != account_id:
            raise ValueError(f"key {key_id!r} does not belong to account {account_id!r}")
        return key
