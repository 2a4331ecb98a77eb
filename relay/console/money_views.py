"""Where the console's pages read money: balances, key spend, budgets and open holds.

Embedded, the in-memory ``Wallet`` is the money authority and answers at once
(``WalletViews``). In cluster mode every figure is PostgreSQL's, cluster-wide
(``relay.cluster.pg_money_views.PgMoneyViews``: ``PgMoneyStore``'s views, as the admin
API's), never the instance's local wallet, which holds nothing shared.
"""

from __future__ import annotations

from typing import Protocol

from relay.money.records import BalanceView, BudgetView, KeySpendView
from relay.money.wallet import Wallet

__all__ = ["MoneyViews", "WalletViews"]


class MoneyViews(Protocol):
    async def balance(self, account_id: str) -> BalanceView: ...

    async def key_spend(self, key_id: str) -> KeySpendView: ...

    async def budget(self, account_id: str) -> BudgetView: ...

    async def open_holds(self, account_id: str) -> int: ...


class WalletViews:
    def __init__(self, wallet: Wallet) -> None:
        self._wallet = wallet

    async def balance(self, account_id: str) -> BalanceView:
        return self._wallet.snapshot(account_id)

    async def key_spend(self, key_id: str) -> KeySpendView:
        return self._wallet.key_snapshot(key_id)

    async def budget(self, account_id: str) -> BudgetView:
        return self._wallet.account_budget(account_id)

    async def open_holds(self, account_id: str) -> int:
        return self._wallet.open_hold_count(account_id)
