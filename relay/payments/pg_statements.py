"""The PostgreSQL statements of the payments' transactions (``relay.payments.pg_backend``).

Each takes a connection already inside a transaction and runs one or two statements of
it: the embedded counterparts are the write functions of ``store``, ``receipts`` and
``auto_settings``, with the same columns and the same rules.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from relay.payments import auto_settings
from relay.payments.auto_settings import AutoTopUpSettings
from relay.payments.crediting import EventRecord
from relay.payments.receipts import Receipt, SellerDetails
from relay.payments.store import PaidPayment, Payment, new_payment_id

__all__ = [
    "PAYMENT_COLUMNS",
    "RECEIPT_COLUMNS",
    "SETTINGS_COLUMNS",
    "add_notice",
    "finalize_paid",
    "issue_receipt",
    "placeholders",
    "record_event",
    "register_failure",
    "save_settings",
    "settings_of",
]

# Any constant shared by every instance: who draws the next receipt number.
_RECEIPT_LOCK = 0x72656C6179 + 18
PAYMENT_COLUMNS = ", ".join(Payment.__struct_fields__)
RECEIPT_COLUMNS = ", ".join(Receipt.__struct_fields__)
SETTINGS_COLUMNS = ", ".join(AutoTopUpSettings.__struct_fields__)


def placeholders(count: int) -> str:
    return ", ".join(f"${i}" for i in range(1, count + 1))


def settings_of(row: Any) -> AutoTopUpSettings:
    values = dict(zip(AutoTopUpSettings.__struct_fields__, tuple(row), strict=True))
    return msgspec.convert(values, AutoTopUpSettings, strict=False)


async def record_event(conn: Any, event: EventRecord, outcome: str, at_ms: int) -> None:
    await conn.execute(
        "INSERT INTO payment_events (event_id, provider, type, outcome, received_at_ms)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING",
        event.event_id,
        event.provider,
        event.type,
        outcome,
        at_ms,
    )


async def finalize_paid(conn: Any, paid: PaidPayment, at_ms: int) -> Payment:
    """Mark ``paid`` as paid, inserting its row if relay never saw it pending."""
    row = await conn.fetchrow(
        f"UPDATE payments SET status = 'paid', amount_micros = $4, amount_minor = $5,"
        " currency = $6, failure_reason = NULL, updated_at_ms = $7"
        " WHERE provider = $1 AND provider_payment_id = $2 AND account_id = $3"
        f" AND status <> 'paid' RETURNING {PAYMENT_COLUMNS}",
        paid.provider,
        paid.provider_payment_id,
        paid.account_id,
        paid.amount_micros,
        paid.amount_minor,
        paid.currency,
        at_ms,
    )
    if row is not None:
        return Payment(*tuple(row))
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
    # A row already paid under this reference makes this INSERT fail on the unique index:
    # the transaction (and its ledger row) rolls back rather than credit twice.
    await conn.execute(
        f"INSERT INTO payments ({PAYMENT_COLUMNS})"
        f" VALUES ({placeholders(len(Payment.__struct_fields__))})",
        *msgspec.structs.astuple(payment),
    )
    return payment


async def issue_receipt(
    conn: Any, payment: Payment, buyer_name: str, seller: SellerDetails, at_ms: int
) -> Receipt:
    year = dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC).year
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _RECEIPT_LOCK)
    seq = int(
        await conn.fetchval("SELECT COALESCE(MAX(seq), 0) FROM receipts WHERE year = $1", year)
    )
    receipt = Receipt(
        number=f"R-{year}-{seq + 1:06d}",
        year=year,
        seq=seq + 1,
        payment_id=payment.id,
        account_id=payment.account_id,
        buyer_name=buyer_name,
        provider=payment.provider,
        payment_reference=payment.provider_payment_id,
        amount_micros=payment.amount_micros,
        currency=payment.currency,
        amount_minor=payment.amount_minor,
        seller_name=seller.name,
        seller_address=seller.address,
        seller_tax_id=seller.tax_id,
        issued_at_ms=at_ms,
    )
    await conn.execute(
        f"INSERT INTO receipts ({RECEIPT_COLUMNS})"
        f" VALUES ({placeholders(len(Receipt.__struct_fields__))})",
        *msgspec.structs.astuple(receipt),
    )
    await conn.execute(
        "UPDATE payments SET receipt_number = $2 WHERE id = $1", payment.id, receipt.number
    )
    return receipt


async def save_settings(conn: Any, settings: AutoTopUpSettings) -> None:
    await conn.execute(
        f"INSERT INTO auto_topups ({SETTINGS_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (account_id) DO UPDATE SET enabled = excluded.enabled,"
        " trigger_micros = excluded.trigger_micros, amount_micros = excluded.amount_micros,"
        " monthly_cap_micros = excluded.monthly_cap_micros,"
        " consecutive_failures = excluded.consecutive_failures,"
        " updated_at_ms = excluded.updated_at_ms",
        settings.account_id,
        int(settings.enabled),
        settings.trigger_micros,
        settings.amount_micros,
        settings.monthly_cap_micros,
        settings.consecutive_failures,
        settings.updated_at_ms,
    )


async def register_failure(conn: Any, account_id: str, at_ms: int) -> AutoTopUpSettings | None:
    """Count a failed refill (the row locked); the third in a row switches it off."""
    row = await conn.fetchrow(
        f"SELECT {SETTINGS_COLUMNS} FROM auto_topups WHERE account_id = $1 FOR UPDATE",
        account_id,
    )
    if row is None:
        return None
    current = settings_of(row)
    failures = current.consecutive_failures + 1
    updated = msgspec.structs.replace(
        current,
        consecutive_failures=failures,
        enabled=current.enabled and failures < auto_settings.MAX_CONSECUTIVE_FAILURES,
        updated_at_ms=at_ms,
    )
    await save_settings(conn, updated)
    return updated


async def add_notice(conn: Any, account_id: str, kind: str, message: str, at_ms: int) -> None:
    await conn.execute(
        "INSERT INTO notices (account_id, kind, message, created_at_ms) VALUES ($1, $2, $3, $4)",
        account_id,
        kind,
        message,
        at_ms,
    )
