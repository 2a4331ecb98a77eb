"""Where payment records live: the seam between the payments logic and its storage engine.

``PaymentsService``, the webhook, auto top-up and the admin routes call a
``PaymentRecords``; they never name an engine. ``SqlitePayments`` (here) is the embedded
one: the wallet is the money authority and every write is one ``Database.write``
transaction made of the functions of ``store``, ``receipts``, ``auto_settings`` and
``crediting``, as before. ``relay.payments.pg_backend.PgPayments`` is the cluster one: one
PostgreSQL transaction per write, the ledger's unique index making a credit happen once
per (account, reference) whichever instance receives it.

A credit answers the receipt it issued, or None when the payment was already credited
(a replay, or a concurrent delivery that lost the race); ``note`` is the ledger row's note
(default: provider and kind).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from relay.identity.audit import append_audit
from relay.money.pricing import micros_to_usd
from relay.money.wallet import DuplicateReference, Wallet
from relay.payments import auto_settings
from relay.payments.auto_settings import AutoTopUpSettings
from relay.payments.crediting import EventRecord, commit_credit, credit_write
from relay.payments.receipts import Receipt, SellerDetails, get_receipt, list_receipts
from relay.payments.store import (
    Notice,
    PaidPayment,
    Payment,
    SavedCustomer,
    add_notice,
    attach_provider_id,
    customer_of,
    dismiss_notice,
    event_seen,
    insert_pending,
    list_notices,
    list_payments,
    mark_failed,
    record_event,
    save_customer,
)
from relay.storage.db import Database

__all__ = [
    "AuditEntry",
    "FailureOutcome",
    "PaymentRecords",
    "SqlitePayments",
    "auto_topup_failure_notice",
]

# (the payment marked failed, or None; the auto top-up settings after counting the failure)
FailureOutcome = tuple[Payment | None, AutoTopUpSettings | None]


class AuditEntry(msgspec.Struct, frozen=True):
    """Who did what, recorded in the same transaction as the change."""

    actor: str
    action: str
    target: str
    detail: dict[str, Any]


def auto_topup_failure_notice(
    payment: Payment, reason: str, settings: AutoTopUpSettings | None
) -> tuple[str, bool]:
    """The notice of a failed refill, and whether this failure just switched it off."""
    amount = micros_to_usd(payment.amount_micros)
    message = f"Automatic top-up of {amount} {payment.currency.upper()} failed: {reason}."
    just_disabled = (
        settings is not None
        and not settings.enabled
        and settings.consecutive_failures == auto_settings.MAX_CONSECUTIVE_FAILURES
    )
    if just_disabled:
        message += " Auto top-up is now off; update the card and turn it back on."
    return message, just_disabled


class PaymentRecords(Protocol):
    """Every read and write the payments logic makes (one transaction per write)."""

    async def credit(
        self,
        paid: PaidPayment,
        *,
        at_ms: int,
        buyer_name: str,
        seller: SellerDetails,
        actor: str,
        event: EventRecord | None,
        note: str | None = None,
    ) -> Receipt | None: ...

    async def record_failure(
        self,
        provider: str,
        provider_payment_id: str,
        reason: str,
        *,
        at_ms: int,
        actor: str,
        event: EventRecord | None,
    ) -> FailureOutcome: ...

    async def remember(self, event: EventRecord, outcome: str, at_ms: int) -> None: ...

    async def event_seen(self, event_id: str) -> bool: ...

    async def save_customer(
        self, account_id: str, customer_id: str, payment_method_id: str | None, at_ms: int
    ) -> None: ...

    async def customer_of(self, account_id: str) -> SavedCustomer | None: ...

    async def insert_pending(self, payment: Payment, audit: AuditEntry) -> None: ...

    async def attach_provider_id(
        self, payment_id: str, provider_payment_id: str, at_ms: int
    ) -> None: ...

    async def save_auto_topup(self, settings: AutoTopUpSettings, audit: AuditEntry) -> None: ...

    async def auto_topups(self, account_id: str | None = None) -> dict[str, AutoTopUpSettings]:
        """Every account's settings, or only ``account_id``'s."""
        ...

    async def pending_auto_topup(self, account_id: str, since_ms: int) -> bool: ...

    async def open_auto_topup(self, payment: Payment, since_ms: int, audit: AuditEntry) -> bool:
        """Insert the refill's pending payment unless one is pending since ``since_ms``
        (atomically: two callers for one account open one). True when it was opened."""
        ...

    async def due_auto_topups(self) -> list[AutoTopUpSettings]:
        """Enabled settings whose account's balance is below the trigger, now."""
        ...

    async def monthly_auto_topup_micros(self, account_id: str, at_ms: int) -> int: ...

    async def add_notice(
        self, account_id: str, kind: str, message: str, at_ms: int, audit: AuditEntry
    ) -> None: ...

    async def notice_since(self, account_id: str, kind: str, since_ms: int) -> bool: ...

    async def list_notices(self, account_id: str, *, include_dismissed: bool) -> list[Notice]: ...

    async def dismiss_notice(self, account_id: str, notice_id: int, at_ms: int) -> bool: ...

    async def list_payments(self, account_id: str) -> list[Payment]: ...

    async def list_receipts(self, account_id: str) -> list[Receipt]: ...

    async def get_receipt(self, number: str) -> Receipt | None: ...


class SqlitePayments:
    """The embedded records: the relay's SQLite database and its in-memory wallet."""

    def __init__(self, db: Database, wallet: Wallet, audit_key: bytes) -> None:
        self.db = db
        self.wallet = wallet
        self._audit_key = audit_key

    def _audit(self, conn: sqlite3.Connection, audit: AuditEntry) -> None:
        append_audit(
            conn,
            self._audit_key,
            actor=audit.actor,
            action=audit.action,
            target=audit.target,
            detail=audit.detail,
        )

    async def credit(
        self,
        paid: PaidPayment,
        *,
        at_ms: int,
        buyer_name: str,
        seller: SellerDetails,
        actor: str,
        event: EventRecord | None,
        note: str | None = None,
    ) -> Receipt | None:
        try:
            # Synchronous: two concurrent deliveries cannot both pass the wallet's check.
            entry = self.wallet.prepare(
                paid.account_id,
                "credit",
                paid.amount_micros,
                reference=paid.provider_payment_id,
                note=note or f"{paid.provider} {paid.kind}",
            )
        except DuplicateReference:
            return None
        write = credit_write(
            entry,
            paid,
            at_ms=at_ms,
            buyer_name=buyer_name,
            seller=seller,
            audit_key=self._audit_key,
            actor=actor,
            event=event,
        )
        # One transaction for ledger, payment, receipt, event and audit; then the wallet.
        return await commit_credit(self.db, self.wallet, entry, write)

    async def record_failure(
        self,
        provider: str,
        provider_payment_id: str,
        reason: str,
        *,
        at_ms: int,
        actor: str,
        event: EventRecord | None,
    ) -> FailureOutcome:
        def write(conn: sqlite3.Connection) -> FailureOutcome:
            if event is not None:
                record_event(conn, event.event_id, event.provider, event.type, "failed", at_ms)
            payment = mark_failed(conn, provider, provider_payment_id, reason, at_ms)
            if payment is None:
                return None, None
            detail = {"payment_id": payment.id, "reference": provider_payment_id, "reason": reason}
            self._audit(conn, AuditEntry(actor, "payment.failed", payment.account_id, detail))
            if payment.kind != "auto_topup":
                return payment, None
            settings = auto_settings.register_failure(conn, payment.account_id, at_ms)
            message, just_disabled = auto_topup_failure_notice(payment, reason, settings)
            if settings is not None and just_disabled:
                disabled = {"consecutive_failures": settings.consecutive_failures}
                self._audit(
                    conn,
                    AuditEntry("auto-topup", "auto_topup.disabled", payment.account_id, disabled),
                )
            add_notice(conn, payment.account_id, "auto_topup_failed", message, at_ms)
            return payment, settings

        return await self.db.write(write)

    async def remember(self, event: EventRecord, outcome: str, at_ms: int) -> None:
        await self.db.write(
            lambda conn: record_event(
                conn, event.event_id, event.provider, event.type, outcome, at_ms
            )
        )

    async def event_seen(self, event_id: str) -> bool:
        return await event_seen(self.db, event_id)

    async def save_customer(
        self, account_id: str, customer_id: str, payment_method_id: str | None, at_ms: int
    ) -> None:
        await self.db.write(
            lambda conn: save_customer(
                conn, account_id, "stripe", customer_id, payment_method_id, at_ms
            )
        )

    async def customer_of(self, account_id: str) -> SavedCustomer | None:
        return await customer_of(self.db, account_id)

    async def _write_with_audit(
        self, change: Callable[[sqlite3.Connection], object], audit: AuditEntry
    ) -> None:
        def write(conn: sqlite3.Connection) -> None:
            change(conn)
            self._audit(conn, audit)

        await self.db.write(write)

    async def insert_pending(self, payment: Payment, audit: AuditEntry) -> None:
        await self._write_with_audit(lambda conn: insert_pending(conn, payment), audit)

    async def attach_provider_id(
        self, payment_id: str, provider_payment_id: str, at_ms: int
    ) -> None:
        await self.db.write(
            lambda conn: attach_provider_id(conn, payment_id, provider_payment_id, at_ms)
        )

    async def save_auto_topup(self, settings: AutoTopUpSettings, audit: AuditEntry) -> None:
        await self._write_with_audit(
            lambda conn: auto_settings.save_settings(conn, settings), audit
        )

    async def auto_topups(self, account_id: str | None = None) -> dict[str, AutoTopUpSettings]:
        every = await auto_settings.load_all_settings(self.db)
        if account_id is None:
            return every
        return {account_id: every[account_id]} if account_id in every else {}

    async def pending_auto_topup(self, account_id: str, since_ms: int) -> bool:
        return await auto_settings.pending_auto_topup(self.db, account_id, since_ms)

    async def open_auto_topup(self, payment: Payment, since_ms: int, audit: AuditEntry) -> bool:
        # The check runs inside the write: the single writer makes check-and-insert atomic.
        def write(conn: sqlite3.Connection) -> bool:
            pending = conn.execute(
                "SELECT 1 FROM payments WHERE kind = 'auto_topup' AND status = 'pending' "
                "AND account_id = ? AND created_at_ms >= ? LIMIT 1",
                (payment.account_id, since_ms),
            ).fetchone()
            if pending is not None:
                return False
            insert_pending(conn, payment)
            self._audit(conn, audit)
            return True

        return await self.db.write(write)

    async def due_auto_topups(self) -> list[AutoTopUpSettings]:
        every = await auto_settings.load_all_settings(self.db)
        wallet = self.wallet
        return [
            settings
            for settings in every.values()
            if settings.enabled
            and wallet.has_account(settings.account_id)
            and wallet.snapshot(settings.account_id).balance_micros < settings.trigger_micros
        ]

    async def monthly_auto_topup_micros(self, account_id: str, at_ms: int) -> int:
        return await auto_settings.monthly_auto_topup_micros(self.db, account_id, at_ms)

    async def add_notice(
        self, account_id: str, kind: str, message: str, at_ms: int, audit: AuditEntry
    ) -> None:
        await self._write_with_audit(
            lambda conn: add_notice(conn, account_id, kind, message, at_ms), audit
        )

    async def notice_since(self, account_id: str, kind: str, since_ms: int) -> bool:
        row = await self.db.fetchone(
            "SELECT 1 FROM notices WHERE account_id = ? AND kind = ? "
            "AND created_at_ms >= ? LIMIT 1",
            (account_id, kind, since_ms),
        )
        return row is not None

    async def list_notices(self, account_id: str, *, include_dismissed: bool) -> list[Notice]:
        return await list_notices(self.db, account_id, include_dismissed=include_dismissed)

    async def dismiss_notice(self, account_id: str, notice_id: int, at_ms: int) -> bool:
        return await self.db.write(lambda conn: dismiss_notice(conn, account_id, notice_id, at_ms))

    async def list_payments(self, account_id: str) -> list[Payment]:
        return await list_payments(self.db, account_id)

    async def list_receipts(self, account_id: str) -> list[Receipt]:
        return await list_receipts(self.db, account_id)

    async def get_receipt(self, number: str) -> Receipt | None:
        return await get_receipt(self.db, number)
