"""The one transaction that turns a confirmed payment into credit.

Payment row marked paid, receipt numbered, provider event remembered, auto top-up
failures reset and the audit row chained: all in the writer transaction that also
commits the wallet's ledger row (queued just before, with no ``await`` in between).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

import msgspec

from relay.identity.audit import append_audit
from relay.money.wallet import LedgerEntry
from relay.payments import auto_settings
from relay.payments.receipts import Receipt, SellerDetails, issue_receipt
from relay.payments.store import PaidPayment, finalize_paid, record_event

__all__ = ["EventRecord", "finalize_credit", "manual_credit_write", "wall_ms"]


class EventRecord(msgspec.Struct, frozen=True):
    """A provider event being handled, remembered with the effect it had."""

    event_id: str
    provider: str
    type: str


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def finalize_credit(
    conn: sqlite3.Connection,
    paid: PaidPayment,
    *,
    at_ms: int,
    buyer_name: str,
    seller: SellerDetails,
    audit_key: bytes,
    actor: str,
    action: str = "payment.credit",
    detail: dict[str, Any] | None = None,
    event: EventRecord | None = None,
) -> Receipt:
    """Payment row paid, receipt numbered, event remembered, audit row: one transaction."""
    payment = finalize_paid(conn, paid, at_ms)
    receipt = issue_receipt(conn, payment, buyer_name=buyer_name, seller=seller, at_ms=at_ms)
    if event is not None:
        record_event(conn, event.event_id, event.provider, event.type, "credited", at_ms)
    if paid.kind == "auto_topup":
        auto_settings.reset_failures(conn, paid.account_id)
    audit_detail = detail or {
        "amount_micros": paid.amount_micros,
        "reference": paid.provider_payment_id,
        "provider": paid.provider,
        "kind": paid.kind,
        "receipt_number": receipt.number,
        "event_id": event.event_id if event else None,
    }
    append_audit(
        conn, audit_key, actor=actor, action=action, target=paid.account_id, detail=audit_detail
    )
    return receipt


def manual_credit_write(
    entry: LedgerEntry,
    *,
    buyer_name: str,
    seller: SellerDetails,
    audit_key: bytes,
    actor: str,
    detail: dict[str, Any],
) -> Callable[[sqlite3.Connection], Receipt]:
    """The write for a manual top-up (``relay wallet credit``) whose ledger row is queued."""
    paid = PaidPayment(
        account_id=entry.account_id,
        provider="manual",
        provider_payment_id=entry.reference,
        kind="manual",
        currency="usd",
        amount_minor=entry.amount_micros // 10_000,
        amount_micros=entry.amount_micros,
    )

    def write(conn: sqlite3.Connection) -> Receipt:
        return finalize_credit(
            conn,
            paid,
            at_ms=entry.created_at_ms or wall_ms(),
            buyer_name=buyer_name,
            seller=seller,
            audit_key=audit_key,
            actor=actor,
            action="wallet.credit",
            detail=detail,
        )

    return write
