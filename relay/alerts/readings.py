"""What the alert watcher reads about money: the seam between the watcher and the engine.

``WalletReadings`` (embedded) reads the in-memory wallet and the local notices table, as
the watcher always did. ``PgReadings`` (cluster mode) reads PostgreSQL in a few bulk
queries per round: balances and holds of every instance, the period counters of
``relay_hold`` (relay.cluster.pg_budgets), the notices every instance writes.
"""

from __future__ import annotations

from typing import Any, Protocol

from relay.cluster.pg_budgets import PeriodBounds
from relay.money.budget import BUDGET_PERIODS
from relay.money.records import BudgetView, KeySpendView
from relay.state import RelayState

__all__ = ["MoneyReadings", "PgReadings", "WalletReadings"]

# (notice id, account id, message) of a failed auto top-up
FailedTopUp = tuple[int, str, str]


class MoneyReadings(Protocol):
    async def available(self) -> dict[str, int]:
        """Every account's available micros (balance + credit limit − held)."""
        ...

    async def key_spends(self) -> dict[str, KeySpendView]:
        """The spend of every key with a spend cap, in its period if it has one."""
        ...

    async def account_budgets(self) -> dict[str, BudgetView]:
        """The budget of every account that has one."""
        ...

    async def last_notice_id(self) -> int: ...

    async def failed_top_ups(self, after_id: int) -> list[FailedTopUp]: ...


class WalletReadings:
    """The embedded readings: the wallet's memory (no I/O) and the local notices table."""

    def __init__(self, state: RelayState) -> None:
        self._state = state

    async def available(self) -> dict[str, int]:
        wallet = self._state.wallet
        return {
            account_id: wallet.snapshot(account_id).available_micros
            for account_id in self._state.store.accounts
            if wallet.has_account(account_id)
        }

    async def key_spends(self) -> dict[str, KeySpendView]:
        wallet = self._state.wallet
        return {
            key.id: wallet.key_snapshot(key.id)
            for key in self._state.store.keys.values()
            if key.spend_cap_micros and wallet.has_key(key.id)
        }

    async def account_budgets(self) -> dict[str, BudgetView]:
        wallet = self._state.wallet
        return {
            account.id: wallet.account_budget(account.id)
            for account in self._state.store.accounts.values()
            if account.budget_micros and wallet.has_account(account.id)
        }

    async def last_notice_id(self) -> int:
        row = await self._state.db.fetchone("SELECT COALESCE(MAX(id), 0) FROM notices")
        return int(row[0]) if row else 0

    async def failed_top_ups(self, after_id: int) -> list[FailedTopUp]:
        rows = await self._state.db.fetchall(
            "SELECT id, account_id, message FROM notices "
            "WHERE id > ? AND kind = 'auto_topup_failed' ORDER BY id",
            (after_id,),
        )
        return [(int(row["id"]), str(row["account_id"]), str(row["message"])) for row in rows]


class PgReadings:
    """Cluster-wide readings from PostgreSQL; ``bounds`` is the wallet's calendar."""

    def __init__(self, pool: Any, bounds: PeriodBounds) -> None:
        self._pool = pool
        self._bounds = bounds

    async def available(self) -> dict[str, int]:
        rows = await self._pool.fetch(
            "SELECT id, balance_micros + credit_limit_micros - held_micros AS available"
            " FROM accounts"
        )
        return {row["id"]: int(row["available"]) for row in rows}

    async def _counters(self, scope: str) -> dict[tuple[str, int], int]:
        """This period's counters (day, week and month starts now) of one scope."""
        starts = [self._bounds(period)[0] for period in BUDGET_PERIODS] + [0]
        rows = await self._pool.fetch(
            "SELECT owner_id, period_start_ms, spent_micros FROM budget_spend"
            " WHERE scope = $1 AND period_start_ms = ANY($2::bigint[])",
            scope,
            starts,
        )
        return {(r["owner_id"], r["period_start_ms"]): int(r["spent_micros"]) for r in rows}

    async def key_spends(self) -> dict[str, KeySpendView]:
        rows = await self._pool.fetch(
            "SELECT id, account_id, spend_cap_micros, spent_micros, held_micros, budget_period"
            " FROM api_keys WHERE spend_cap_micros > 0"
        )
        counters = await self._counters("key")
        spends: dict[str, KeySpendView] = {}
        for row in rows:
            period, spent, held = row["budget_period"], row["spent_micros"], row["held_micros"]
            used, resets = spent, None
            if period is not None:
                start, resets = self._bounds(period)
                # No counter yet: no hold was placed this period, so nothing was spent in it.
                used = counters.get((row["id"], start), 0)
            spends[row["id"]] = KeySpendView(
                key_id=row["id"],
                account_id=row["account_id"],
                spent_micros=spent,
                held_micros=held,
                spend_cap_micros=row["spend_cap_micros"],
                remaining_micros=row["spend_cap_micros"] - used - held,
                budget_period=period,
                period_spent_micros=used,
                resets_at_ms=resets,
            )
        return spends

    async def account_budgets(self) -> dict[str, BudgetView]:
        rows = await self._pool.fetch(
            "SELECT id, budget_micros, budget_period, held_micros FROM accounts"
            " WHERE budget_micros > 0"
        )
        counters = await self._counters("account")
        budgets: dict[str, BudgetView] = {}
        for row in rows:
            period = row["budget_period"]
            start, resets = (0, None) if period is None else self._bounds(period)
            used = counters.get((row["id"], start), 0)
            budgets[row["id"]] = BudgetView(
                budget_micros=row["budget_micros"],
                budget_period=period,
                spent_micros=used,
                remaining_micros=row["budget_micros"] - used - row["held_micros"],
                resets_at_ms=resets,
            )
        return budgets

    async def last_notice_id(self) -> int:
        return int(await self._pool.fetchval("SELECT COALESCE(MAX(id), 0) FROM notices"))

    async def failed_top_ups(self, after_id: int) -> list[FailedTopUp]:
        rows = await self._pool.fetch(
            "SELECT id, account_id, message FROM notices"
            " WHERE id > $1 AND kind = 'auto_topup_failed' ORDER BY id",
            after_id,
        )
        return [(int(row["id"]), str(row["account_id"]), str(row["message"])) for row in rows]
