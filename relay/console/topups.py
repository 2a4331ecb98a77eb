"""Top-ups as the Billing page shows them: the ledger's credits and refunds joined with
the payments that brought them (provider, status, receipt), plus card payments that have
not credited anything (yet): a checkout still open, or one that failed.

A credit's ledger reference is its payment's ``provider_payment_id`` (see
``relay.payments.store``), which is the join key. Credits made before payments existed,
or by an operator without a payment row, show as manual with no receipt.
"""

from __future__ import annotations

from typing import Any

import msgspec

from relay.payments.store import Payment, list_payments
from relay.storage.reader import RowReader

__all__ = ["PENDING_EXPIRES_MS", "TopUp", "list_top_ups"]

# Stripe Checkout Sessions expire after 24 hours: a payment still pending after that
# was abandoned, and saying "pending" forever would mislead.
PENDING_EXPIRES_MS = 24 * 3600 * 1000


class TopUp(msgspec.Struct, frozen=True):
    created_at_ms: int
    kind: str  # "credit" or "refund" (ledger rows), or "payment" (no ledger row)
    amount_micros: int
    reference: str
    note: str | None = None
    method: str = "manual"  # the payment provider: "stripe" or "manual"
    status: str = "credited"  # credited, refunded, pending, failed or expired
    receipt_number: str | None = None
    failure_reason: str | None = None

    @property
    def receipt_url(self) -> str | None:
        if self.receipt_number is None:
            return None
        return f"/console/receipts/{self.receipt_number}"


def _from_ledger(row: Any, payment: Payment | None) -> TopUp:
    kind = row["kind"]
    return TopUp(
        created_at_ms=row["created_at_ms"],
        kind=kind,
        amount_micros=row["amount_micros"],
        reference=row["reference"],
        note=row["note"],
        method=payment.provider if payment else "manual",
        status="refunded" if kind == "refund" else "credited",
        receipt_number=payment.receipt_number if payment else None,
    )


def _from_payment(payment: Payment, now_ms: int) -> TopUp:
    status: str = payment.status
    if status == "pending" and now_ms - payment.created_at_ms > PENDING_EXPIRES_MS:
        status = "expired"
    return TopUp(
        created_at_ms=payment.created_at_ms,
        kind="payment",
        amount_micros=payment.amount_micros,
        reference=payment.provider_payment_id,
        method=payment.provider,
        status=status,
        failure_reason=payment.failure_reason,
    )


async def list_top_ups(
    db: RowReader, account_id: str, *, now_ms: int, limit: int = 50
) -> list[TopUp]:
    """The newest ``limit`` top-ups and unfinished payments, newest first."""
    # The partial index on credit references holds only credits and refunds, so this
    # never walks the account's (many) charge rows.
    rows = await db.fetchall(
        "SELECT id, kind, amount_micros, reference, note, created_at_ms "
        "FROM ledger INDEXED BY ledger_credit_reference "
        "WHERE account_id = ? AND kind IN ('credit', 'refund') ORDER BY id DESC LIMIT ?",
        (account_id, limit),
    )
    payments = {p.provider_payment_id: p for p in await list_payments(db, account_id, limit=limit)}
    top_ups = [_from_ledger(row, payments.pop(row["reference"], None)) for row in rows]
    # What is left and not paid never reached the ledger: show it with its status.
    top_ups += [_from_payment(p, now_ms) for p in payments.values() if p.status != "paid"]
    top_ups.sort(key=lambda top_up: top_up.created_at_ms, reverse=True)
    return top_ups[:limit]
