"""Period budgets on PostgreSQL: key spend caps per day/week/month and account budgets.

Embedded, the wallet keeps what each key and account spent in the current period in
memory (``relay.money.budget``). Here that spend must be cluster-wide, so it is a counter
row per (scope, owner, period start) in ``budget_spend``, read by ``relay_hold`` and
incremented by ``relay_settle`` in the transaction that writes the charge:

- **Which period.** The instance passes the start of the current day, week and month by
  its calendar and clock (``[budgets]``); the database picks the one the row's
  ``budget_period`` names (0 for a lifetime account budget). The hold remembers the starts
  it was checked against, and its charge counts there: a request that settles just after
  a boundary counts in the period it was admitted in (embedded: the period it settles in).
- **The first hold of a period** creates the counter from the ledger (the period's charges
  so far, e.g. after ``relay migrate`` or a budget set mid-period). It runs with the
  account's row locked by the same ``relay_hold``, and every settlement of the account
  locks that row before it writes a charge, so no charge can fall between the sum and the
  counter.
- **The rule** is the headroom rule again, now against the budget: a hold is placed only
  if ``cap − spent in period − Σ worst cases in flight ≥ W`` (the key's, and the
  account's budget beside its balance); in-flight worst cases count whatever period they
  were admitted in, which can only refuse earlier, never admit more. So a key with a $X
  monthly budget used through any number of instances never spends more than $X in a
  month, exactly as one embedded wallet.

The table and functions are ``relay.storage.schema_period_budgets`` (migration 13).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from relay.money.budget import BudgetPeriod
from relay.money.records import BudgetView, KeySpendView

__all__ = ["PeriodBounds", "account_budget", "key_spend"]

PeriodBounds = Callable[[BudgetPeriod], tuple[int, int]]

# The spend of a period for the views: the counter, or (no hold yet this period) the
# ledger's charges since its start; read-only, the counter is created by relay_hold.
_PERIOD_SPENT = """
SELECT COALESCE(
    (SELECT spent_micros FROM budget_spend
      WHERE scope = $1 AND owner_id = $2 AND period_start_ms = $3),
    (SELECT -SUM(amount_micros) FROM ledger
      WHERE kind = 'charge' AND created_at_ms >= $3
        AND CASE $1 WHEN 'account' THEN account_id ELSE key_id END = $2),
    0)
"""


async def key_spend(pool: Any, key_id: str, bounds: PeriodBounds) -> KeySpendView:
    """A key's spend as the wallet's ``key_snapshot`` shows it, cluster-wide."""
    row = await pool.fetchrow(
        "SELECT account_id, spend_cap_micros, spent_micros, held_micros, budget_period"
        " FROM api_keys WHERE id = $1",
        key_id,
    )
    if row is None:
        raise KeyError(f"key {key_id!r} not found")
    cap, spent, held, period = (
        row["spend_cap_micros"],
        row["spent_micros"],
        row["held_micros"],
        row["budget_period"],
    )
    used, resets = spent, None
    if period is not None:
        start, resets = bounds(period)
        used = int(await pool.fetchval(_PERIOD_SPENT, "key", key_id, start))
    return KeySpendView(
        key_id=key_id,
        account_id=row["account_id"],
        spent_micros=spent,
        held_micros=held,
        spend_cap_micros=cap,
        remaining_micros=cap - used - held if cap else None,
        budget_period=period,
        period_spent_micros=used,
        resets_at_ms=resets,
    )


async def account_budget(pool: Any, account_id: str, bounds: PeriodBounds) -> BudgetView:
    """An account's budget as the wallet's ``account_budget`` shows it, cluster-wide."""
    row = await pool.fetchrow(
        "SELECT budget_micros, budget_period, held_micros FROM accounts WHERE id = $1",
        account_id,
    )
    if row is None:
        raise KeyError(f"account {account_id!r} not found")
    budget, period, held = row["budget_micros"], row["budget_period"], row["held_micros"]
    start, resets = (0, None) if period is None else bounds(period)
    used = int(await pool.fetchval(_PERIOD_SPENT, "account", account_id, start))
    return BudgetView(
        budget_micros=budget,
        budget_period=period,
        spent_micros=used,
        remaining_micros=budget - used - held if budget else None,
        resets_at_ms=resets,
    )
