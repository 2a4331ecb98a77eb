"""The console's money figures from PostgreSQL (``MoneyViews`` of cluster mode).

Balances, key spend (with its budget period) and account budgets are ``PgMoneyStore``'s
views, the ones the admin API answers with; open holds are counted in ``holds`` (every
instance's, and the video jobs' owned by the cluster). The store is the runtime's current
one: a rejoined lease binds a new store (``ClusterRuntime.rejoin``).
"""

from __future__ import annotations

from relay.cluster.runtime import ClusterRuntime
from relay.money.records import BalanceView, BudgetView, KeySpendView

__all__ = ["PgMoneyViews"]


class PgMoneyViews:
    def __init__(self, runtime: ClusterRuntime) -> None:
        self._runtime = runtime

    async def balance(self, account_id: str) -> BalanceView:
        return await self._runtime.store.snapshot(account_id)

    async def key_spend(self, key_id: str) -> KeySpendView:
        return await self._runtime.store.key_spend(key_id)

    async def budget(self, account_id: str) -> BudgetView:
        return await self._runtime.store.account_budget(account_id)

    async def open_holds(self, account_id: str) -> int:
        count = await self._runtime.pool.fetchval(
            "SELECT count(*) FROM holds WHERE account_id = $1", account_id
        )
        return int(count)
