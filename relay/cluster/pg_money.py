"""Money in PostgreSQL for N instances: accounts, keys, credits, holds and settlements.

The cluster counterpart of ``relay.money.wallet.Wallet`` (same rules, docs/architecture.md
§3): where the Wallet is atomic because it runs on one event loop, this store is atomic
because each operation is one transaction in one PL/pgSQL function (``relay.cluster.
pg_schema``), serialised per account by the account's row lock. So the headroom rule's
proof carries over unchanged across instances: a hold is placed only if its worst case fits
``balance + credit_limit − Σ worst`` (and the key's ``cap − spent − Σ worst``), and a
settlement never charges more than the hold's worst case — the database refuses the rest.

What is held follows the wallet too: the estimate far from the edge, the worst case within
max(margin, recent spend) of it (``relay.storage.schema_recent_spend``). The hold and settle
calls and their results are in ``relay.cluster.pg_holds``.

Every call is one round trip. Methods are coroutines (unlike the Wallet's), so a caller that
must settle in a ``finally`` during cancellation shields the call (``asyncio.shield``); a
settlement that never arrives is released by lease expiry (``relay.cluster.pg_leases``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Literal

from relay.cluster.pg_budgets import account_budget, key_spend
from relay.cluster.pg_holds import (
    ESTIMATED,
    ClusterHold,
    HoldAsk,
    SettleItem,
    Settlement,
    call_hold,
    preview_hold,
    settle_batch,
    settle_one,
)
from relay.money.amounts import check_limit, check_micros
from relay.money.budget import BUDGET_PERIODS, BudgetCalendar, BudgetPeriod
from relay.money.records import (
    AccountMode,
    BalanceView,
    BudgetView,
    DuplicateReference,
    KeySpendView,
)

__all__ = ["ClusterHold", "PgMoneyStore", "Settlement"]

CreditKind = Literal["credit", "refund"]
_UTC = BudgetCalendar()
Calendar = Callable[[], BudgetCalendar]
Clock = Callable[[], int]


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class PgMoneyStore:
    """Holds and settlements of one instance (``instance_id``) over a shared pool.

    ``fast_path_margin_micros`` and ``spend_window_s``, as the wallet's: the hold is the
    cheap estimate only while the account (and a capped key) keeps max(margin, spend of the
    last one to two windows) of headroom beyond the worst case; it only sets the reported
    ``available``, never whether a request is admitted. Windows are counted on the wall
    clock (``use_periods``), the one clock instances share.
    """

    def __init__(
        self,
        pool: Any,
        instance_id: str,
        *,
        fast_path_margin_micros: int = 1_000_000,
        spend_window_s: float = 60.0,
    ) -> None:
        check_micros("fast_path_margin_micros", fast_path_margin_micros)
        if spend_window_s <= 0:
            raise ValueError("spend_window_s must be positive")
        self._pool = pool
        self.instance_id = instance_id
        self._margin = fast_path_margin_micros
        self._window_ms = max(1, round(spend_window_s * 1000))
        # Budget periods (relay.cluster.pg_budgets): UTC's calendar by default; the app gives
        # the wallet's (its [budgets], which a reload may replace, and its clock).
        self._calendar: Calendar = lambda: _UTC
        self._clock: Clock = _wall_ms
        # The current (day, week, month) starts, valid in [from, until) for one calendar:
        # computing them costs ~tens of µs, a hold only compares two integers.
        self._starts: tuple[BudgetCalendar | None, int, int, tuple[int, int, int]] = (
            None,
            0,
            0,
            (0, 0, 0),
        )

    def bound_to(self, instance_id: str) -> PgMoneyStore:
        """The same store (pool, margin, budget calendar) placing holds under another lease:
        a rejoined instance's (relay.cluster.runtime)."""
        sibling = PgMoneyStore(
            self._pool,
            instance_id,
            fast_path_margin_micros=self._margin,
            spend_window_s=self._window_ms / 1000,
        )
        sibling.use_periods(self._calendar, self._clock)
        return sibling

    def use_periods(self, calendar: Calendar, clock_ms: Clock) -> None:
        """Where budget periods start: ``calendar()``'s periods at ``clock_ms()`` (the
        clock of the recent-spend windows too)."""
        self._calendar, self._clock = calendar, clock_ms
        self._starts = (None, 0, 0, (0, 0, 0))

    def _period_bounds(self, period: BudgetPeriod) -> tuple[int, int]:
        return self._calendar().bounds(period, self._clock())

    def period_starts(self) -> tuple[int, int, int]:
        """(day, week, month) starts now, as ``relay_hold`` takes them."""
        calendar, now = self._calendar(), self._clock()
        cached_for, valid_from, valid_until, starts = self._starts
        if cached_for is calendar and valid_from <= now < valid_until:
            return starts
        bounds = [calendar.bounds(period, now) for period in BUDGET_PERIODS]
        day, week, month = (start for start, _ in bounds)
        self._starts = (
            calendar,
            max(start for start, _ in bounds),
            min(end for _, end in bounds),
            (day, week, month),
        )
        return day, week, month

    def spend_window(self) -> int:
        """The index of the current recent-spend window, as ``relay_hold`` and
        ``relay_settle`` take it."""
        return self._clock() // self._window_ms

    @property
    def fast_path_margin_micros(self) -> int:
        return self._margin

    # -- accounts and keys ---------------------------------------------------------------

    async def create_account(
        self, account_id: str, *, mode: AccountMode = "prepaid", credit_limit_micros: int = 0
    ) -> None:
        check_limit(mode, credit_limit_micros)
        await self._pool.execute(
            "INSERT INTO accounts (id, mode, credit_limit_micros) VALUES ($1, $2, $3)",
            account_id,
            mode,
            credit_limit_micros,
        )

    async def create_key(self, key_id: str, account_id: str, *, spend_cap_micros: int = 0) -> None:
        check_micros("spend_cap_micros", spend_cap_micros)
        await self._pool.execute(
            "INSERT INTO api_keys (id, account_id, spend_cap_micros) VALUES ($1, $2, $3)",
            key_id,
            account_id,
            spend_cap_micros,
        )

    async def set_spend_cap(self, key_id: str, spend_cap_micros: int) -> None:
        check_micros("spend_cap_micros", spend_cap_micros)
        await self._pool.execute(
            "UPDATE api_keys SET spend_cap_micros = $2 WHERE id = $1", key_id, spend_cap_micros
        )

    async def credit(
        self,
        account_id: str,
        amount_micros: int,
        *,
        reference: str,
        kind: CreditKind = "credit",
        note: str | None = None,
        conn: Any = None,
    ) -> bool:
        """Append a credit (or refund) row; idempotent per ``(account, reference)``.

        True when the row was written; False when the same amount under the same reference
        was already credited (a replay: nothing changes); ``DuplicateReference`` when the
        reference was used for a different amount. ``conn``: inside the caller's
        transaction (its audit row)."""
        check_micros("amount_micros", amount_micros, positive=True)
        if not reference:
            raise ValueError("a credit needs a reference")
        db = conn or self._pool
        written = await db.fetchval(
            "INSERT INTO ledger (account_id, kind, amount_micros, reference, note)"
            " VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT (account_id, reference) WHERE kind IN ('credit', 'refund')"
            " DO NOTHING RETURNING id",
            account_id,
            kind,
            amount_micros,
            reference,
            note,
        )
        if written is not None:
            return True
        existing = await db.fetchval(
            "SELECT amount_micros FROM ledger WHERE account_id = $1 AND reference = $2"
            " AND kind IN ('credit', 'refund')",
            account_id,
            reference,
        )
        if existing != amount_micros:
            raise DuplicateReference(f"reference {reference!r} was already used on this account")
        return False

    # -- holds ---------------------------------------------------------------------------

    async def hold(
        self,
        account_id: str,
        key_id: str | None,
        *,
        estimate_micros: int,
        worst_case_micros: int,
        request_id: str | None = None,
    ) -> ClusterHold:
        """Place a hold under the headroom rule, atomically across instances; ``QuotaError``
        (402) naming the balance or the key's spend cap when it does not fit. What is held
        follows the wallet's rule (``Wallet.plan_hold``): the estimate while the headroom
        left after the worst case is at least max(margin, recent spend), else the worst
        case."""
        check_micros("estimate_micros", estimate_micros)
        check_micros("worst_case_micros", worst_case_micros)
        if estimate_micros > worst_case_micros:
            raise ValueError("estimate_micros must not exceed worst_case_micros")
        ask = self._ask(account_id, key_id, estimate_micros, worst_case_micros, request_id)
        return await call_hold(self._pool, ask, self._period_end)

    async def preview_hold(
        self, account_id: str, key_id: str | None, *, estimate_micros: int, worst_case_micros: int
    ) -> int | None:
        """What ``hold`` would hold now (estimate or worst case), placing nothing: a dry
        run's figure. None for an unknown account."""
        ask = self._ask(account_id, key_id, estimate_micros, worst_case_micros, None)
        return await preview_hold(self._pool, ask)

    def _ask(
        self,
        account_id: str,
        key_id: str | None,
        estimate_micros: int,
        worst_case_micros: int,
        request_id: str | None,
    ) -> HoldAsk:
        return HoldAsk(
            instance_id=self.instance_id,
            account_id=account_id,
            key_id=key_id,
            request_id=request_id,
            estimate_micros=estimate_micros,
            worst_case_micros=worst_case_micros,
            margin_micros=self._margin,
            period_starts=self.period_starts(),
            window=self.spend_window(),
        )

    def _period_end(self, period: BudgetPeriod) -> int:
        return self._period_bounds(period)[1]

    async def settle(
        self,
        hold: ClusterHold,
        actual_cost_micros: int,
        *,
        reference: str,
        estimated: bool = False,
    ) -> Settlement:
        """Close the hold and charge the measured cost (capped at its worst case) in one
        transaction. Exactly once: a second call answers ``closed`` and charges nothing."""
        check_micros("actual_cost_micros", actual_cost_micros)
        if actual_cost_micros and not reference:
            raise ValueError("a charge needs a reference")
        note = ESTIMATED if estimated else None
        return await settle_one(
            self._pool,
            hold,
            self._owner(hold),
            actual_cost_micros,
            reference,
            note,
            self.spend_window(),
        )

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        """One connection in one transaction, for a batch that writes more than money (the
        settler's usage rows): pass it as ``settle_many(..., conn=...)``."""
        async with self._pool.acquire() as conn, conn.transaction():
            yield conn

    async def settle_many(
        self, items: Sequence[SettleItem], *, conn: Any = None
    ) -> list[Settlement]:
        """Settle a batch in ONE round trip and one transaction (group commit): each item is
        ``(hold, actual_cost_micros, reference, estimated)`` and ends exactly as ``settle``
        would end it (results in the items' order; the same hold twice: the earlier item
        settles, the later answers ``closed``). All or nothing: if the statement fails, no
        item settled and the whole batch can be retried (settling is idempotent per hold).
        Each charge counts in the recent spend of the window it settles in."""
        for _, cost, reference, _ in items:
            check_micros("actual_cost_micros", cost)
            if cost and not reference:
                raise ValueError("a charge needs a reference")
        return await settle_batch(conn or self._pool, items, self._owner, self.spend_window())

    def _owner(self, hold: ClusterHold) -> str:
        return hold.instance_id or self.instance_id

    async def release(self, hold: ClusterHold) -> Settlement:
        """Close the hold without charging (failed call); a no-op once closed."""
        return await settle_one(
            self._pool, hold, self._owner(hold), 0, "", None, self.spend_window()
        )

    # -- views ---------------------------------------------------------------------------

    async def snapshot(self, account_id: str) -> BalanceView:
        row = await self._pool.fetchrow(
            "SELECT mode, credit_limit_micros, balance_micros, held_micros FROM accounts"
            " WHERE id = $1",
            account_id,
        )
        if row is None:
            raise KeyError(f"account {account_id!r} not found")
        balance, held, limit = row["balance_micros"], row["held_micros"], row["credit_limit_micros"]
        return BalanceView(
            balance_micros=balance,
            held_micros=held,
            available_micros=balance + limit - held,
            credit_limit_micros=limit,
            mode=row["mode"],
        )

    async def key_snapshot(self, key_id: str) -> KeySpendView:
        row = await self._pool.fetchrow(
            "SELECT account_id, spend_cap_micros, spent_micros, held_micros FROM api_keys"
            " WHERE id = $1",
            key_id,
        )
        if row is None:
            raise KeyError(f"key {key_id!r} not found")
        cap, spent, held = row["spend_cap_micros"], row["spent_micros"], row["held_micros"]
        return KeySpendView(
            key_id=key_id,
            account_id=row["account_id"],
            spent_micros=spent,
            held_micros=held,
            spend_cap_micros=cap,
            remaining_micros=None if cap == 0 else max(0, cap - spent - held),
        )

    async def key_spend(self, key_id: str) -> KeySpendView:
        """``key_snapshot`` with the key's budget period (what the cap is measured against)."""
        return await key_spend(self._pool, key_id, self._period_bounds)

    async def account_budget(self, account_id: str) -> BudgetView:
        return await account_budget(self._pool, account_id, self._period_bounds)

    async def ledger_sum(self, account_id: str) -> int:
        """Σ of the account's ledger rows, summed from the rows themselves (for checks)."""
        total = await self._pool.fetchval(
            "SELECT COALESCE(SUM(amount_micros), 0) FROM ledger WHERE account_id = $1",
            account_id,
        )
        return int(total)

    async def open_hold_count(self, account_id: str | None = None) -> int:
        if account_id is None:
            return int(await self._pool.fetchval("SELECT count(*) FROM holds"))
        return int(
            await self._pool.fetchval(
                "SELECT count(*) FROM holds WHERE account_id = $1", account_id
            )
        )
