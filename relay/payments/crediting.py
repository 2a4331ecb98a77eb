"""The one transaction that turns a confirmed payment into credit.

The credit's ledger row, the payment row marked paid, the receipt numbered (and its mail
queued), the provider event remembered, auto top-up failures reset and the audit row
chained: ONE write function, so one savepoint in the writer's transaction, so all of
them commit or none. Only then does the wallet's balance move (``commit_credit``): money
changes memory only after the database accepted it, and a credit refused on disk (say a
reference this account already used) leaves no trace anywhere.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from relay.identity.audit import append_audit
from relay.money.ledger import insert_entry
from relay.money.wallet import LedgerEntry, Wallet
from relay.payments import auto_settings
from relay.payments.billing_mail import enqueue_receipt_mail
from relay.payments.receipts import Receipt, SellerDetails, issue_receipt
from relay.payments.store import PaidPayment, finalize_paid, record_event
from relay.storage.db import Database

__all__ = [
    "EventRecord",
    "commit_credit",
    "credit_write",
    "finalize_credit",
    "manual_credit_write",
    "wall_ms",
]

T = TypeVar("T")


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
    # Its mail row commits with the credit: a restart can neither lose nor repeat it.
    enqueue_receipt_mail(conn, paid.account_id, receipt.number, at_ms)
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


def credit_write(
    entry: LedgerEntry,
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
) -> Callable[[sqlite3.Connection], Receipt]:
    """The ledger row (from ``Wallet.prepare``) and ``finalize_credit``, as one write."""

    def write(conn: sqlite3.Connection) -> Receipt:
        insert_entry(conn, entry)
        return finalize_credit(
            conn,
            paid,
            at_ms=at_ms,
            buyer_name=buyer_name,
            seller=seller,
            audit_key=audit_key,
            actor=actor,
            action=action,
            detail=detail,
            event=event,
        )

    return write


def manual_credit_write(
    entry: LedgerEntry,
    *,
    buyer_name: str,
    seller: SellerDetails,
    audit_key: bytes,
    actor: str,
    detail: dict[str, Any],
) -> Callable[[sqlite3.Connection], Receipt]:
    """The write for a manual top-up (``relay wallet credit``): ledger row, payment, receipt
    and audit row."""
    paid = PaidPayment(
        account_id=entry.account_id,
        provider="manual",
        provider_payment_id=entry.reference,
        kind="manual",
        currency="usd",
        amount_minor=entry.amount_micros // 10_000,
        amount_micros=entry.amount_micros,
    )
    return credit_write(
        entry,
        paid,
        at_ms=entry.created_at_ms or wall_ms(),
        buyer_name=buyer_name,
        seller=seller,
        audit_key=audit_key,
        actor=actor,
        action="wallet.credit",
        detail=detail,
    )


async def commit_credit(
    db: Database, wallet: Wallet, entry: LedgerEntry, write: Callable[[sqlite3.Connection], T]
) -> T:
    """Commit ``write`` (which holds ``entry``'s ledger row), then apply ``entry``.

    Shielded: a caller cancelled while the commit is under way (a client that hung up)
    must not leave a committed credit out of the wallet; the commit finishes and is
    applied (or abandoned) whatever happens to the caller.
    """

    async def commit() -> T:
        try:
            result = await db.write(write)
        except BaseException:
            wallet.abandon(entry)
            raise
        wallet.apply(entry)
        return result

    task = asyncio.ensure_future(commit())
    # A caller that left never reads the outcome; reading it here keeps asyncio quiet.
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
    return await asyncio.shield(task)
