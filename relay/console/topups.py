"""Top-ups as the Billing page shows them: for now, the ledger's credits and refunds.

This is the seam for payments: when card payments land, ``list_top_ups`` will also join
the payments table to fill ``receipt_url`` and ``method``; the page already renders both.
"""

from __future__ import annotations

import msgspec

from relay.db import Database

__all__ = ["TopUp", "list_top_ups"]


class TopUp(msgspec.Struct, frozen=True):
    ledger_id: int
    kind: str  # "credit" or "refund"
    amount_micros: int
    reference: str
    note: str | None
    created_at_ms: int
    method: str = "manual"  # how the money arrived; payments will add e.g. "card"
    receipt_url: str | None = None


async def list_top_ups(db: Database, account_id: str, *, limit: int = 50) -> list[TopUp]:
    # The partial index on credit references holds only credits and refunds, so this
    # never walks the account's (many) charge rows.
    rows = await db.fetchall(
        "SELECT id, kind, amount_micros, reference, note, created_at_ms "
        "FROM ledger INDEXED BY ledger_credit_reference "
        "WHERE account_id = ? AND kind IN ('credit', 'refund') ORDER BY id DESC LIMIT ?",
        (account_id, limit),
    )
    return [TopUp(*tuple(row)) for row in rows]
