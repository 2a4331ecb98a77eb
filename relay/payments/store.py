"""The payments tables: payment rows (pending → paid | failed), handled webhook events,
saved customers, console notices, and the exact conversion of minor units to micros.

Write functions take the writer's ``sqlite3.Connection`` and run inside its transaction
(``Database.write``); read functions take the ``Database``. A payment's ledger reference
is its ``provider_payment_id``, so a payment is credited at most once however often it is
reported: the wallet's reference set, the ledger's unique index and ``finalize_paid``'s
status check all refuse a second credit.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from typing import Any, Literal

import msgspec

from relay.storage.db import Database
from relay.storage.reader import RowReader

__all__ = [
    "MINOR_UNIT_MICROS",
    "Notice",
    "PaidPayment",
    "Payment",
    "PaymentKind",
    "PaymentProvider",
    "SavedCustomer",
    "add_notice",
    "attach_provider_id",
    "customer_of",
    "dismiss_notice",
    "event_seen",
    "finalize_paid",
    "find_payment",
    "insert_pending",
    "list_notices",
    "list_payments",
    "mark_failed",
    "micros_to_minor",
    "minor_to_micros",
    "new_payment_id",
    "now_ms",
    "payment_view",
    "record_event",
    "save_customer",
    "set_receipt_number",
]

PaymentKind = Literal["topup", "auto_topup", "manual"]
PaymentProvider = Literal["stripe", "manual"]
PaymentStatus = Literal["pending", "paid", "failed"]
# usd, eur and gbp have two decimals: one cent is exactly 10,000 micro-units.
MINOR_UNIT_MICROS = 10_000
_TWO_DECIMAL = frozenset({"usd", "eur", "gbp"})


class Payment(msgspec.Struct, frozen=True):
    id: str
    account_id: str
    provider: PaymentProvider
    provider_payment_id: str
    kind: PaymentKind
    amount_micros: int
    currency: str
    amount_minor: int
    status: PaymentStatus
    created_at_ms: int
    updated_at_ms: int
    receipt_number: str | None = None
    failure_reason: str | None = None


class PaidPayment(msgspec.Struct, frozen=True):
    """A payment the provider confirmed: what to credit, to whom, under which reference."""

    account_id: str
    provider: PaymentProvider
    provider_payment_id: str
    kind: PaymentKind
    currency: str
    amount_minor: int
    amount_micros: int

    @classmethod
    def in_minor_units(
        cls,
        account_id: str,
        provider_payment_id: str,
        kind: PaymentKind,
        *,
        currency: str,
        amount_minor: int,
    ) -> PaidPayment:
        """A card payment: the credit is exactly the charged amount in micro-units."""
        return cls(
            account_id=account_id,
            provider="stripe",
            provider_payment_id=provider_payment_id,
            kind=kind,
            currency=currency.lower(),
            amount_minor=amount_minor,
            amount_micros=minor_to_micros(amount_minor, currency),
        )


class SavedCustomer(msgspec.Struct, frozen=True):
    account_id: str
    provider: str
    customer_id: str
    payment_method_id: str | None


class Notice(msgspec.Struct, frozen=True):
    id: int
    account_id: str
    kind: str
    message: str
    created_at_ms: int
    dismissed_at_ms: int | None


_PAYMENT_COLUMNS = ", ".join(Payment.__struct_fields__)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_payment_id() -> str:
    return "pay_" + secrets.token_hex(8)


def minor_to_micros(amount_minor: int, currency: str) -> int:
    """Exact: ``amount_minor`` cents of a two-decimal currency in micro-units."""
    if currency.lower() not in _TWO_DECIMAL:
        raise ValueError(f"currency {currency!r} is not supported (usd, eur, gbp)")
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int) or amount_minor < 0:
        raise ValueError("amount_minor must be a non-negative integer")
    return amount_minor * MINOR_UNIT_MICROS


def micros_to_minor(amount_micros: int, currency: str) -> int:
    """The inverse of ``minor_to_micros``; refuses amounts that are not whole cents."""
    minor, rest = divmod(amount_micros, MINOR_UNIT_MICROS)
    if rest or currency.lower() not in _TWO_DECIMAL:
        raise ValueError("the amount must be a whole number of cents in usd, eur or gbp")
    return minor


# -- writes (inside the writer's transaction) -------------------------------------------


def insert_pending(conn: sqlite3.Connection, payment: Payment) -> None:
    placeholders = ", ".join("?" for _ in Payment.__struct_fields__)
    conn.execute(
        f"INSERT INTO payments ({_PAYMENT_COLUMNS}) VALUES ({placeholders})",
        msgspec.structs.astuple(payment),
    )


def _find(
    conn: sqlite3.Connection,
    provider: str,
    provider_payment_id: str,
    account_id: str | None = None,
) -> Payment | None:
    """The payment under this reference: of ``account_id`` when given, since references
    are unique per account only (a manual reference may be reused on another account)."""
    sql = f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE provider = ? AND provider_payment_id = ?"
    params: tuple[str, ...] = (provider, provider_payment_id)
    if account_id is not None:
        sql += " AND account_id = ?"
        params += (account_id,)
    row = conn.execute(sql + " ORDER BY created_at_ms LIMIT 1", params).fetchone()
    return None if row is None else Payment(*tuple(row))


def finalize_paid(conn: sqlite3.Connection, paid: PaidPayment, at_ms: int) -> Payment:
    """Mark ``paid`` as paid (inserting its row if relay never saw it pending)."""
    existing = _find(conn, paid.provider, paid.provider_payment_id, paid.account_id)
    if existing is None:
        payment = Payment(
            id=new_payment_id(),
            account_id=paid.account_id,
            provider=paid.provider,
            provider_payment_id=paid.provider_payment_id,
            kind=paid.kind,
            amount_micros=paid.amount_micros,
            currency=paid.currency,
            amount_minor=paid.amount_minor,
            status="paid",
            created_at_ms=at_ms,
            updated_at_ms=at_ms,
        )
        insert_pending(conn, payment)
        return payment
    if existing.status == "paid":
        raise ValueError(f"payment {existing.id} is already paid")
    conn.execute(
        "UPDATE payments SET status = 'paid', amount_micros = ?, amount_minor = ?, "
        "currency = ?, failure_reason = NULL, updated_at_ms = ? WHERE id = ?",
        (paid.amount_micros, paid.amount_minor, paid.currency, at_ms, existing.id),
    )
    return msgspec.structs.replace(
        existing,
        status="paid",
        amount_micros=paid.amount_micros,
        amount_minor=paid.amount_minor,
        currency=paid.currency,
        updated_at_ms=at_ms,
    )


def mark_failed(
    conn: sqlite3.Connection, provider: str, provider_payment_id: str, reason: str, at_ms: int
) -> Payment | None:
    """A pending payment failed; a paid one stays paid (a late failure event changes nothing)."""
    existing = _find(conn, provider, provider_payment_id)
    if existing is None or existing.status != "pending":
        return None
    conn.execute(
        "UPDATE payments SET status = 'failed', failure_reason = ?, updated_at_ms = ? WHERE id = ?",
        (reason[:500], at_ms, existing.id),
    )
    return msgspec.structs.replace(existing, status="failed", failure_reason=reason[:500])


def set_receipt_number(conn: sqlite3.Connection, payment_id: str, number: str) -> None:
    conn.execute("UPDATE payments SET receipt_number = ? WHERE id = ?", (number, payment_id))


def record_event(
    conn: sqlite3.Connection, event_id: str, provider: str, type_: str, outcome: str, at_ms: int
) -> bool:
    """Remember a handled webhook event; False if it was already recorded."""
    cursor = conn.execute(
        "INSERT INTO payment_events (event_id, provider, type, outcome, received_at_ms) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
        (event_id, provider, type_, outcome, at_ms),
    )
    return cursor.rowcount == 1


def save_customer(
    conn: sqlite3.Connection,
    account_id: str,
    provider: str,
    customer_id: str,
    payment_method_id: str | None,
    at_ms: int,
) -> None:
    conn.execute(
        "INSERT INTO payment_customers (account_id, provider, customer_id, payment_method_id, "
        "updated_at_ms) VALUES (?, ?, ?, ?, ?) ON CONFLICT (account_id) DO UPDATE SET "
        "provider = excluded.provider, customer_id = excluded.customer_id, "
        "payment_method_id = COALESCE(excluded.payment_method_id, payment_method_id), "
        "updated_at_ms = excluded.updated_at_ms",
        (account_id, provider, customer_id, payment_method_id, at_ms),
    )


def add_notice(
    conn: sqlite3.Connection, account_id: str, kind: str, message: str, at_ms: int
) -> None:
    conn.execute(
        "INSERT INTO notices (account_id, kind, message, created_at_ms) VALUES (?, ?, ?, ?)",
        (account_id, kind, message, at_ms),
    )


def dismiss_notice(conn: sqlite3.Connection, account_id: str, notice_id: int, at_ms: int) -> bool:
    cursor = conn.execute(
        "UPDATE notices SET dismissed_at_ms = ? "
        "WHERE id = ? AND account_id = ? AND dismissed_at_ms IS NULL",
        (at_ms, notice_id, account_id),
    )
    return cursor.rowcount == 1


# -- reads ------------------------------------------------------------------------------


async def find_payment(db: Database, provider: str, provider_payment_id: str) -> Payment | None:
    row = await db.fetchone(
        f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE provider = ? AND provider_payment_id = ?",
        (provider, provider_payment_id),
    )
    return None if row is None else Payment(*tuple(row))


async def list_payments(db: RowReader, account_id: str, *, limit: int = 100) -> list[Payment]:
    rows = await db.fetchall(
        f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE account_id = ? "
        "ORDER BY created_at_ms DESC, id DESC LIMIT ?",
        (account_id, limit),
    )
    return [Payment(*tuple(row)) for row in rows]


async def event_seen(db: Database, event_id: str) -> bool:
    row = await db.fetchone("SELECT 1 FROM payment_events WHERE event_id = ?", (event_id,))
    return row is not None


async def customer_of(db: RowReader, account_id: str) -> SavedCustomer | None:
    row = await db.fetchone(
        "SELECT account_id, provider, customer_id, payment_method_id FROM payment_customers "
        "WHERE account_id = ?",
        (account_id,),
    )
    return None if row is None else SavedCustomer(*tuple(row))


async def list_notices(
    db: Database, account_id: str, *, include_dismissed: bool = False
) -> list[Notice]:
    where = "" if include_dismissed else " AND dismissed_at_ms IS NULL"
    rows = await db.fetchall(
        "SELECT id, account_id, kind, message, created_at_ms, dismissed_at_ms FROM notices "
        f"WHERE account_id = ?{where} ORDER BY id DESC LIMIT 100",
        (account_id,),
    )
    return [Notice(*tuple(row)) for row in rows]


def payment_view(payment: Payment) -> dict[str, Any]:
    return msgspec.structs.asdict(payment)


def attach_provider_id(
    conn: sqlite3.Connection, payment_id: str, provider_payment_id: str, at_ms: int
) -> None:
    """Give a pending payment the id the provider assigned once the call returned.

    If a webhook already recorded that id (it can overtake the API answer), the webhook's
    row is the payment and this placeholder goes away.
    """
    taken = conn.execute(
        "SELECT 1 FROM payments WHERE provider_payment_id = ? AND id != ?",
        (provider_payment_id, payment_id),
    ).fetchone()
    if taken:
        conn.execute("DELETE FROM payments WHERE id = ? AND status = 'pending'", (payment_id,))
        return
    conn.execute(
        "UPDATE payments SET provider_payment_id = ?, updated_at_ms = ? WHERE id = ?",
        (provider_payment_id, at_ms, payment_id),
    )
