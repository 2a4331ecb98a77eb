"""Payment records in PostgreSQL (cluster mode): the same rules as ``SqlitePayments``.

Every write is one transaction on one pooled connection. A credit is the ledger row
first — ``INSERT … ON CONFLICT (account_id, reference) DO NOTHING`` on the credit-once
index — and then, only if that row was written, the payment marked paid, the receipt
numbered, its mail queued, the event remembered and auto top-up failures reset. Two
instances receiving the same webhook at once both reach that INSERT: the second waits on
the first's index entry, finds it committed and writes nothing, so the payment is
credited once and the balance (the ledger's trigger) moves once.

Receipt numbers run without gaps per year across instances: the credit takes a
transaction-scoped advisory lock before drawing the next number (the embedded single
writer gives the same guarantee by running one transaction at a time).

Audit rows go to PostgreSQL's hash chain (``relay.cluster.pg_audit``) inside the same
transaction as the change they record, as the embedded store writes them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from relay.cluster import pg_audit
from relay.payments import auto_settings
from relay.payments.auto_settings import AutoTopUpSettings
from relay.payments.backend import AuditEntry, FailureOutcome, auto_topup_failure_notice
from relay.payments.crediting import EventRecord
from relay.payments.pg_statements import (
    PAYMENT_COLUMNS,
    RECEIPT_COLUMNS,
    SETTINGS_COLUMNS,
    add_notice,
    finalize_paid,
    issue_receipt,
    placeholders,
    record_event,
    register_failure,
    save_settings,
    settings_of,
)
from relay.payments.receipts import Receipt, SellerDetails
from relay.payments.store import Notice, PaidPayment, Payment, SavedCustomer

__all__ = ["PgPayments"]


class PgPayments:
    """``PaymentRecords`` over an asyncpg pool shared by this instance's other stores."""

    def __init__(self, pool: Any, audit_key: bytes) -> None:
        self._pool = pool
        self._audit_key = audit_key

    async def _audit(self, conn: Any, audit: AuditEntry) -> None:
        """``audit`` chained on ``conn``, inside the transaction of the change it records."""
        await pg_audit.append(
            conn,
            self._audit_key,
            actor=audit.actor,
            action=audit.action,
            target=audit.target,
            detail=audit.detail,
        )

    # -- credit ------------------------------------------------------------------------

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
        async with self._pool.acquire() as conn, conn.transaction():
            written = await conn.fetchval(
                "INSERT INTO ledger (account_id, kind, amount_micros, reference, note,"
                " created_at_ms) VALUES ($1, 'credit', $2, $3, $4, $5)"
                " ON CONFLICT (account_id, reference) WHERE kind IN ('credit', 'refund')"
                " DO NOTHING RETURNING id",
                paid.account_id,
                paid.amount_micros,
                paid.provider_payment_id,
                note or f"{paid.provider} {paid.kind}",
                at_ms,
            )
            if written is None:
                return None  # already credited (here or on another instance)
            payment = await finalize_paid(conn, paid, at_ms)
            receipt = await issue_receipt(conn, payment, buyer_name, seller, at_ms)
            await conn.execute(
                "INSERT INTO billing_mail (kind, account_id, ref, created_at_ms,"
                " next_attempt_at_ms) VALUES ('receipt', $1, $2, $3, $3)"
                " ON CONFLICT (kind, account_id, ref) DO NOTHING",
                paid.account_id,
                receipt.number,
                at_ms,
            )
            if event is not None:
                await record_event(conn, event, "credited", at_ms)
            if paid.kind == "auto_topup":
                await conn.execute(
                    "UPDATE auto_topups SET consecutive_failures = 0"
                    " WHERE account_id = $1 AND consecutive_failures <> 0",
                    paid.account_id,
                )
            # A manual top-up is audited as the embedded admin route audits it (action
            # ``wallet.credit``, the amount and reference only); a payment in full.
            if paid.kind == "manual":
                action = "wallet.credit"
                detail: dict[str, Any] = {
                    "amount_micros": paid.amount_micros,
                    "reference": paid.provider_payment_id,
                }
            else:
                action = "payment.credit"
                detail = {
                    "amount_micros": paid.amount_micros,
                    "reference": paid.provider_payment_id,
                    "provider": paid.provider,
                    "kind": paid.kind,
                    "receipt_number": receipt.number,
                    "event_id": event.event_id if event else None,
                }
            await self._audit(conn, AuditEntry(actor, action, paid.account_id, detail))
        return receipt

    # -- failures and events -----------------------------------------------------------

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
        reason = reason[:500]
        async with self._pool.acquire() as conn, conn.transaction():
            if event is not None:
                await record_event(conn, event, "failed", at_ms)
            row = await conn.fetchrow(
                "UPDATE payments SET status = 'failed', failure_reason = $3, updated_at_ms = $4"
                " WHERE id = (SELECT id FROM payments WHERE provider = $1"
                " AND provider_payment_id = $2 ORDER BY created_at_ms LIMIT 1 FOR UPDATE)"
                f" AND status = 'pending' RETURNING {PAYMENT_COLUMNS}",
                provider,
                provider_payment_id,
                reason,
                at_ms,
            )
            if row is None:
                return None, None
            payment = Payment(*tuple(row))
            detail = {"payment_id": payment.id, "reference": provider_payment_id, "reason": reason}
            await self._audit(conn, AuditEntry(actor, "payment.failed", payment.account_id, detail))
            if payment.kind != "auto_topup":
                return payment, None
            settings = await register_failure(conn, payment.account_id, at_ms)
            message, just_disabled = auto_topup_failure_notice(payment, reason, settings)
            if settings is not None and just_disabled:
                disabled = {"consecutive_failures": settings.consecutive_failures}
                await self._audit(
                    conn,
                    AuditEntry("auto-topup", "auto_topup.disabled", payment.account_id, disabled),
                )
            await add_notice(conn, payment.account_id, "auto_topup_failed", message, at_ms)
            return payment, settings

    async def remember(self, event: EventRecord, outcome: str, at_ms: int) -> None:
        async with self._pool.acquire() as conn:
            await record_event(conn, event, outcome, at_ms)

    async def event_seen(self, event_id: str) -> bool:
        found = await self._pool.fetchval(
            "SELECT 1 FROM payment_events WHERE event_id = $1", event_id
        )
        return found is not None

    # -- customers and pending payments ------------------------------------------------

    async def save_customer(
        self, account_id: str, customer_id: str, payment_method_id: str | None, at_ms: int
    ) -> None:
        await self._pool.execute(
            "INSERT INTO payment_customers (account_id, provider, customer_id,"
            " payment_method_id, updated_at_ms) VALUES ($1, 'stripe', $2, $3, $4)"
            " ON CONFLICT (account_id) DO UPDATE SET provider = excluded.provider,"
            " customer_id = excluded.customer_id, payment_method_id ="
            " COALESCE(excluded.payment_method_id, payment_customers.payment_method_id),"
            " updated_at_ms = excluded.updated_at_ms",
            account_id,
            customer_id,
            payment_method_id,
            at_ms,
        )

    async def customer_of(self, account_id: str) -> SavedCustomer | None:
        row = await self._pool.fetchrow(
            "SELECT account_id, provider, customer_id, payment_method_id"
            " FROM payment_customers WHERE account_id = $1",
            account_id,
        )
        return None if row is None else SavedCustomer(*tuple(row))

    async def insert_pending(self, payment: Payment, audit: AuditEntry) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO payments ({PAYMENT_COLUMNS})"
                f" VALUES ({placeholders(len(Payment.__struct_fields__))})",
                *msgspec.structs.astuple(payment),
            )
            await self._audit(conn, audit)

    async def attach_provider_id(
        self, payment_id: str, provider_payment_id: str, at_ms: int
    ) -> None:
        """As ``store.attach_provider_id``: a webhook's row under that id wins."""
        async with self._pool.acquire() as conn, conn.transaction():
            taken = await conn.fetchval(
                "SELECT 1 FROM payments WHERE provider_payment_id = $1 AND id <> $2",
                provider_payment_id,
                payment_id,
            )
            if taken:
                await conn.execute(
                    "DELETE FROM payments WHERE id = $1 AND status = 'pending'", payment_id
                )
                return
            await conn.execute(
                "UPDATE payments SET provider_payment_id = $2, updated_at_ms = $3 WHERE id = $1",
                payment_id,
                provider_payment_id,
                at_ms,
            )

    # -- auto top-up -------------------------------------------------------------------

    async def save_auto_topup(self, settings: AutoTopUpSettings, audit: AuditEntry) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await save_settings(conn, settings)
            await self._audit(conn, audit)

    async def auto_topups(self, account_id: str | None = None) -> dict[str, AutoTopUpSettings]:
        sql = f"SELECT {SETTINGS_COLUMNS} FROM auto_topups"
        rows = await (
            self._pool.fetch(sql)
            if account_id is None
            else self._pool.fetch(sql + " WHERE account_id = $1", account_id)
        )
        return {settings.account_id: settings for settings in map(settings_of, rows)}

    async def pending_auto_topup(self, account_id: str, since_ms: int) -> bool:
        found = await self._pool.fetchval(
            "SELECT 1 FROM payments WHERE kind = 'auto_topup' AND status = 'pending'"
            " AND account_id = $1 AND created_at_ms >= $2 LIMIT 1",
            account_id,
            since_ms,
        )
        return found is not None

    async def open_auto_topup(self, payment: Payment, since_ms: int, audit: AuditEntry) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            # The settings row locked: two instances opening a refill for one account take
            # turns, and the second sees the first's pending payment.
            await conn.execute(
                "SELECT 1 FROM auto_topups WHERE account_id = $1 FOR UPDATE", payment.account_id
            )
            pending = await conn.fetchval(
                "SELECT 1 FROM payments WHERE kind = 'auto_topup' AND status = 'pending'"
                " AND account_id = $1 AND created_at_ms >= $2 LIMIT 1",
                payment.account_id,
                since_ms,
            )
            if pending is not None:
                return False
            await conn.execute(
                f"INSERT INTO payments ({PAYMENT_COLUMNS})"
                f" VALUES ({placeholders(len(Payment.__struct_fields__))})",
                *msgspec.structs.astuple(payment),
            )
            await self._audit(conn, audit)
        return True

    async def due_auto_topups(self) -> list[AutoTopUpSettings]:
        rows = await self._pool.fetch(
            f"SELECT {', '.join('t.' + c for c in AutoTopUpSettings.__struct_fields__)}"
            " FROM auto_topups AS t JOIN accounts AS a ON a.id = t.account_id"
            " WHERE t.enabled = 1 AND a.balance_micros < t.trigger_micros"
            " AND a.status = 'active' ORDER BY t.account_id"
        )
        return [settings_of(row) for row in rows]

    async def monthly_auto_topup_micros(self, account_id: str, at_ms: int) -> int:
        total = await self._pool.fetchval(
            "SELECT COALESCE(SUM(amount_micros), 0) FROM payments WHERE account_id = $1"
            " AND kind = 'auto_topup' AND status IN ('pending', 'paid') AND created_at_ms >= $2",
            account_id,
            auto_settings.month_start_ms(at_ms),
        )
        return int(total)

    # -- notices -----------------------------------------------------------------------

    async def add_notice(
        self, account_id: str, kind: str, message: str, at_ms: int, audit: AuditEntry
    ) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await add_notice(conn, account_id, kind, message, at_ms)
            await self._audit(conn, audit)

    async def notice_since(self, account_id: str, kind: str, since_ms: int) -> bool:
        found = await self._pool.fetchval(
            "SELECT 1 FROM notices WHERE account_id = $1 AND kind = $2"
            " AND created_at_ms >= $3 LIMIT 1",
            account_id,
            kind,
            since_ms,
        )
        return found is not None

    async def list_notices(self, account_id: str, *, include_dismissed: bool) -> list[Notice]:
        where = "" if include_dismissed else " AND dismissed_at_ms IS NULL"
        rows = await self._pool.fetch(
            "SELECT id, account_id, kind, message, created_at_ms, dismissed_at_ms FROM notices"
            f" WHERE account_id = $1{where} ORDER BY id DESC LIMIT 100",
            account_id,
        )
        return [Notice(*tuple(row)) for row in rows]

    async def dismiss_notice(self, account_id: str, notice_id: int, at_ms: int) -> bool:
        status = await self._pool.execute(
            "UPDATE notices SET dismissed_at_ms = $3"
            " WHERE id = $1 AND account_id = $2 AND dismissed_at_ms IS NULL",
            notice_id,
            account_id,
            at_ms,
        )
        return bool(status == "UPDATE 1")

    # -- reads -------------------------------------------------------------------------

    async def list_payments(self, account_id: str) -> list[Payment]:
        rows = await self._pool.fetch(
            f"SELECT {PAYMENT_COLUMNS} FROM payments WHERE account_id = $1"
            " ORDER BY created_at_ms DESC, id DESC LIMIT 100",
            account_id,
        )
        return [Payment(*tuple(row)) for row in rows]

    async def list_receipts(self, account_id: str) -> list[Receipt]:
        rows = await self._pool.fetch(
            f"SELECT {RECEIPT_COLUMNS} FROM receipts WHERE account_id = $1 ORDER BY year, seq",
            account_id,
        )
        return [Receipt(*tuple(row)) for row in rows]

    async def get_receipt(self, number: str) -> Receipt | None:
        row = await self._pool.fetchrow(
            f"SELECT {RECEIPT_COLUMNS} FROM receipts WHERE number = $1", number
        )
        return None if row is None else Receipt(*tuple(row))
