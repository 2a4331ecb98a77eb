"""Holds and settlements in PostgreSQL: the calls of ``relay_hold`` and ``relay_settle``.

``PgMoneyStore`` (``relay.cluster.pg_money``) places and closes holds through these
functions; the rules are in the SQL (``relay.storage.schema_recent_spend``, entry 17, and
the entries before it). Each call is one round trip: a hold is one statement whatever it
decides (the headroom rule on the worst case, the threshold on recent spend for what is
held), a batch of settlements is one statement for the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import msgspec

from relay.cluster.pg_leases import LeaseLost
from relay.errors import QuotaError
from relay.money.budget import BudgetPeriod
from relay.money.quota_messages import balance_message, charge_note, limit_message

__all__ = [
    "ESTIMATED",
    "ClusterHold",
    "HoldAsk",
    "SettleItem",
    "Settlement",
    "call_hold",
    "preview_hold",
    "settle_batch",
    "settle_one",
]

# The charge row's note when the cost was estimated (a stream cut short), the wallet's
# words. An overrun's part is appended by relay_settle, in the same words since entry 19.
ESTIMATED = charge_note(estimated=True, overrun=False, measured_micros=0, worst_case_micros=0)


class ClusterHold(msgspec.Struct, frozen=True):
    """An open hold in the ``holds`` table; settle or release it once."""

    hold_id: int
    account_id: str
    key_id: str | None
    held_micros: int
    estimate_micros: int
    worst_case_micros: int
    # The lease it was placed under: it settles under that id whatever lease the instance
    # holds by then (a rejoin registers a new one), so a reaped hold answers ``closed``.
    instance_id: str = ""

    @property
    def strict(self) -> bool:
        return self.held_micros == self.worst_case_micros


class Settlement(msgspec.Struct, frozen=True):
    """How a hold ended: ``settled`` (charged), ``released`` (no charge), ``closed`` (it was
    already settled, or released by lease expiry: nothing charged now), or
    ``duplicate_reference`` (that charge reference exists: released, not charged again)."""

    outcome: Literal["settled", "released", "closed", "duplicate_reference"]
    charged_micros: int
    overrun: bool


class HoldAsk(msgspec.Struct, frozen=True):
    """One hold to place: who, how much, and the instance's view of the time (the budget
    periods' starts and the recent-spend window index, both from its clock)."""

    instance_id: str
    account_id: str
    key_id: str | None
    request_id: str | None
    estimate_micros: int
    worst_case_micros: int
    margin_micros: int
    period_starts: tuple[int, int, int]
    window: int


# (hold, actual cost, reference, estimated): as settle_many takes them.
SettleItem = tuple[ClusterHold, int, str, bool]
PeriodEnd = Callable[[BudgetPeriod], int]


async def call_hold(db: Any, ask: HoldAsk, period_end: PeriodEnd) -> ClusterHold:
    """Place the hold in one round trip; ``QuotaError`` (402) naming the balance or the
    budget when it does not fit, ``LeaseLost`` or ``KeyError`` when it cannot be placed."""
    row = await db.fetchrow(
        "SELECT * FROM relay_hold($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        ask.instance_id,
        ask.account_id,
        ask.key_id,
        ask.request_id,
        ask.estimate_micros,
        ask.worst_case_micros,
        ask.margin_micros,
        *ask.period_starts,
        ask.window,
    )
    outcome = row["outcome"]
    if outcome == "ok":
        return ClusterHold(
            hold_id=int(row["hold_id"]),
            account_id=ask.account_id,
            key_id=ask.key_id,
            held_micros=int(row["held_micros"]),
            estimate_micros=ask.estimate_micros,
            worst_case_micros=ask.worst_case_micros,
            instance_id=ask.instance_id,
        )
    if outcome == "balance":
        raise QuotaError(balance_message(int(row["headroom_micros"]), ask.worst_case_micros))
    if outcome in ("key_cap", "account_budget"):
        raise QuotaError(await _cap_message(db, ask, row, period_end))
    if outcome == "lease_lost":
        raise LeaseLost(f"instance {ask.instance_id}: lease expired; no hold placed")
    raise KeyError(f"{'account' if outcome == 'no_account' else 'key'} not found")


# relay_hold's choice of what to hold, read-only: the account's and a capped key's headroom
# after the worst case against max(margin, recent spend); a key with a budget period counts
# its period's spend (the counter, or the ledger before its first hold of the period).
_PREVIEW = """
SELECT CASE
    WHEN a.balance_micros + a.credit_limit_micros - a.worst_micros - $3
         >= GREATEST($5, relay_recent_spend($6, a.recent_window, a.recent_current_micros,
                                            a.recent_previous_micros))
     AND (k.id IS NULL OR k.spend_cap_micros = 0
          OR k.spend_cap_micros - k.worst_micros - $3 - CASE
                 WHEN k.budget_period IS NULL THEN k.spent_micros
                 ELSE COALESCE(
                     (SELECT b.spent_micros FROM budget_spend AS b
                       WHERE b.scope = 'key' AND b.owner_id = k.id
                         AND b.period_start_ms = relay_period_start(k.budget_period, $7, $8, $9)),
                     (SELECT COALESCE(-SUM(l.amount_micros), 0) FROM ledger AS l
                       WHERE l.key_id = k.id AND l.kind = 'charge'
                         AND l.created_at_ms >= relay_period_start(k.budget_period, $7, $8, $9)))
                 END
             >= GREATEST($5, relay_recent_spend($6, k.recent_window, k.recent_current_micros,
                                                k.recent_previous_micros)))
    THEN $4 ELSE $3 END
FROM accounts AS a LEFT JOIN api_keys AS k ON k.id = $2 AND k.account_id = a.id
WHERE a.id = $1
"""


async def preview_hold(db: Any, ask: HoldAsk) -> int | None:
    """What ``call_hold`` would hold now (the estimate or the worst case), placing nothing;
    None for an unknown account. Whether it would be admitted is not asked here."""
    held = await db.fetchval(
        _PREVIEW,
        ask.account_id,
        ask.key_id,
        ask.worst_case_micros,
        ask.estimate_micros,
        ask.margin_micros,
        ask.window,
        *ask.period_starts,
    )
    return None if held is None else int(held)


async def _cap_message(db: Any, ask: HoldAsk, row: Any, period_end: PeriodEnd) -> str:
    """The wallet's text (``limit_message``): which budget refused, what it leaves, its
    size and when it resets. ``relay_hold`` does not return the cap itself, so a refusal
    (a 402, never the admitted path) reads it: one more bounded round trip."""
    if row["outcome"] == "key_cap":
        who, cap_sql, owner = "key", _KEY_CAP, ask.key_id
    else:
        who, cap_sql, owner = "account", _ACCOUNT_BUDGET, ask.account_id
    cap = int(await db.fetchval(cap_sql, owner) or 0)
    period = row["period"]
    return limit_message(
        who,
        period,
        cap,
        int(row["headroom_micros"] or 0),
        ask.worst_case_micros,
        0 if period is None else period_end(period),
    )


_KEY_CAP = "SELECT spend_cap_micros FROM api_keys WHERE id = $1"
_ACCOUNT_BUDGET = "SELECT budget_micros FROM accounts WHERE id = $1"


async def settle_one(
    db: Any,
    hold: ClusterHold,
    owner: str,
    cost_micros: int,
    reference: str,
    note: str | None,
    window: int,
) -> Settlement:
    """Close one hold (charge ``cost_micros``, 0 releases it) in one round trip."""
    row = await db.fetchrow(
        "SELECT * FROM relay_settle($1, $2, $3, $4, $5, $6)",
        hold.hold_id,
        owner,
        cost_micros,
        reference,
        note,
        window,
    )
    return _settlement(row)


async def settle_batch(
    db: Any, items: Sequence[SettleItem], owner: Callable[[ClusterHold], str], window: int
) -> list[Settlement]:
    """Settle every item in ONE statement, results in the items' order.

    Rows are locked in one global order (account, then key): two batches from two
    instances touching the same accounts in opposite orders would otherwise deadlock."""
    order = sorted(
        range(len(items)),
        key=lambda i: (items[i][0].account_id, items[i][0].key_id or "", i),
    )
    batch = [items[i] for i in order]
    rows = await db.fetch(
        "SELECT r.outcome, r.charged_micros, r.overrun"
        " FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[])"
        " WITH ORDINALITY AS s(hold_id, cost, reference, note, instance, n)"
        " CROSS JOIN LATERAL relay_settle(s.hold_id, s.instance, s.cost, s.reference,"
        " s.note, $6) AS r ORDER BY s.n",
        [hold.hold_id for hold, _, _, _ in batch],
        [cost for _, cost, _, _ in batch],
        [reference for _, _, reference, _ in batch],
        [ESTIMATED if estimated else None for _, _, _, estimated in batch],
        [owner(hold) for hold, _, _, _ in batch],
        window,
    )
    results: list[Settlement | None] = [None] * len(items)
    for position, row in zip(order, rows, strict=True):
        results[position] = _settlement(row)
    return [result for result in results if result is not None]


def _settlement(row: Any) -> Settlement:
    return Settlement(
        outcome=row["outcome"],
        charged_micros=int(row["charged_micros"]),
        overrun=bool(row["overrun"]),
    )
