"""Auto top-up settings per account, and the failure count that switches it off.

Kept apart from ``relay.payments.auto_topup`` (the trigger and the refill task) so that
crediting and failure handling in ``relay.payments.service`` can update the settings in
the same transaction as the payment without importing the trigger.
"""

from __future__ import annotations

import datetime as dt
import sqlite3

import msgspec

from relay.storage.db import Database

__all__ = [
    "MAX_CONSECUTIVE_FAILURES",
    "AutoTopUpSettings",
    "load_all_settings",
    "month_start_ms",
    "monthly_auto_topup_micros",
    "pending_auto_topup",
    "register_failure",
    "reset_failures",
    "save_settings",
]

# After this many failed refills in a row the card is probably dead: stop trying.
MAX_CONSECUTIVE_FAILURES = 3


class AutoTopUpSettings(msgspec.Struct, frozen=True):
    account_id: str
    enabled: bool
    trigger_micros: int
    amount_micros: int
    monthly_cap_micros: int
    consecutive_failures: int = 0
    updated_at_ms: int = 0


_COLUMNS = ", ".join(AutoTopUpSettings.__struct_fields__)


def _from_row(row: sqlite3.Row | tuple[object, ...]) -> AutoTopUpSettings:
    values = tuple(row)
    return msgspec.convert(
        dict(zip(AutoTopUpSettings.__struct_fields__, values, strict=True)),
        AutoTopUpSettings,
        strict=False,
    )


def save_settings(conn: sqlite3.Connection, settings: AutoTopUpSettings) -> None:
    conn.execute(
        f"INSERT INTO auto_topups ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (account_id) DO UPDATE SET enabled = excluded.enabled, "
        "trigger_micros = excluded.trigger_micros, amount_micros = excluded.amount_micros, "
        "monthly_cap_micros = excluded.monthly_cap_micros, "
        "consecutive_failures = excluded.consecutive_failures, "
        "updated_at_ms = excluded.updated_at_ms",
        (
            settings.account_id,
            int(settings.enabled),
            settings.trigger_micros,
            settings.amount_micros,
            settings.monthly_cap_micros,
            settings.consecutive_failures,
            settings.updated_at_ms,
        ),
    )


def _read(conn: sqlite3.Connection, account_id: str) -> AutoTopUpSettings | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM auto_topups WHERE account_id = ?", (account_id,)
    ).fetchone()
    return None if row is None else _from_row(row)


def register_failure(
    conn: sqlite3.Connection, account_id: str, at_ms: int
) -> AutoTopUpSettings | None:
    """Count a failed refill; the third in a row disables auto top-up. The new settings."""
    current = _read(conn, account_id)
    if current is None:
        return None
    failures = current.consecutive_failures + 1
    updated = msgspec.structs.replace(
        current,
        consecutive_failures=failures,
        enabled=current.enabled and failures < MAX_CONSECUTIVE_FAILURES,
        updated_at_ms=at_ms,
    )
    save_settings(conn, updated)
    return updated


def reset_failures(conn: sqlite3.Connection, account_id: str) -> AutoTopUpSettings | None:
    current = _read(conn, account_id)
    if current is None or current.consecutive_failures == 0:
        return current
    updated = msgspec.structs.replace(current, consecutive_failures=0)
    save_settings(conn, updated)
    return updated


async def load_all_settings(db: Database) -> dict[str, AutoTopUpSettings]:
    rows = await db.fetchall(f"SELECT {_COLUMNS} FROM auto_topups")
    return {settings.account_id: settings for settings in map(_from_row, rows)}


def month_start_ms(at_ms: int) -> int:
    moment = dt.datetime.fromtimestamp(at_ms / 1000, tz=dt.UTC)
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return int(start.timestamp() * 1000)


async def monthly_auto_topup_micros(db: Database, account_id: str, at_ms: int) -> int:
    """Auto top-ups this calendar month (UTC), paid or still pending."""
    row = await db.fetchone(
        "SELECT COALESCE(SUM(amount_micros), 0) FROM payments WHERE account_id = ? "
        "AND kind = 'auto_topup' AND status IN ('pending', 'paid') AND created_at_ms >= ?",
        (account_id, month_start_ms(at_ms)),
    )
    return int(row[0]) if row else 0


async def pending_auto_topup(db: Database, account_id: str, since_ms: int) -> bool:
    """A refill still awaiting the provider's verdict (e.g. a webhook not yet received)."""
    row = await db.fetchone(
        "SELECT 1 FROM payments WHERE kind = 'auto_topup' AND status = 'pending' "
        "AND account_id = ? AND created_at_ms >= ? LIMIT 1",
        (account_id, since_ms),
    )
    return row is not None
