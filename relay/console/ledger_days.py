"""The ledger as people read it: one line per day with credits, charges and the balance at
the day's end, or the rows of one kind (credits, refunds, …) for a closer look.

Thousands of tiny per-request charges say little one by one; per day they read as
"what did we spend, what came in, where did that leave us". The running balance is
computed backwards from the ledger's own sum (not the in-memory wallet), so every
figure on the page agrees with the rows written so far.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from relay.storage.reader import RowReader

__all__ = ["KINDS", "LedgerDay", "ledger_days", "ledger_rows_of_kind"]

DAY_MS = 86_400_000
WINDOW_DAYS = 31
KINDS = ("credit", "charge", "refund", "adjustment")


class LedgerDay(msgspec.Struct, frozen=True):
    day: str  # YYYY-MM-DD, UTC
    credits_micros: int
    charges_micros: int  # negative or zero
    other_micros: int  # refunds and adjustments
    charge_count: int
    closing_balance_micros: int

    @property
    def net_micros(self) -> int:
        return self.credits_micros + self.charges_micros + self.other_micros


def _day_text(day: int) -> str:
    return dt.datetime.fromtimestamp(day * DAY_MS / 1000, tz=dt.UTC).date().isoformat()


async def _sum(db: RowReader, sql: str, params: tuple[object, ...]) -> int:
    row = await db.fetchone(sql, params)
    return int(row[0] or 0) if row is not None else 0


async def ledger_days(
    db: RowReader, account_id: str, *, now_ms: int, before_day: int | None = None
) -> tuple[list[LedgerDay], int | None]:
    """Days with ledger rows in a window of ``WINDOW_DAYS`` ending before ``before_day``
    (a day number; default: after today), newest first, and the next window's
    ``before_day`` when older rows exist."""
    end_day = before_day if before_day is not None else now_ms // DAY_MS + 1
    start_day = end_day - WINDOW_DAYS
    start_ms, end_ms = start_day * DAY_MS, end_day * DAY_MS
    rows = await db.fetchall(
        "SELECT created_at_ms / ? AS day, kind, SUM(amount_micros), COUNT(*) FROM ledger "
        "INDEXED BY ledger_account_id WHERE account_id = ? AND created_at_ms >= ? "
        "AND created_at_ms < ? GROUP BY day, kind",
        (DAY_MS, account_id, start_ms, end_ms),
    )
    later = await _sum(
        db,
        "SELECT SUM(amount_micros) FROM ledger INDEXED BY ledger_account_id "
        "WHERE account_id = ? AND created_at_ms >= ?",
        (account_id, end_ms),
    )
    total = await _sum(
        db,
        "SELECT SUM(amount_micros) FROM ledger INDEXED BY ledger_account_id WHERE account_id = ?",
        (account_id,),
    )
    per_day: dict[int, dict[str, tuple[int, int]]] = {}
    for row in rows:
        per_day.setdefault(int(row[0]), {})[row[1]] = (int(row[2]), int(row[3]))
    days: list[LedgerDay] = []
    balance = total - later  # the balance at the end of the window's last day
    for day in sorted(per_day, reverse=True):
        kinds = per_day[day]
        credits = kinds.get("credit", (0, 0))[0]
        charges, charge_count = kinds.get("charge", (0, 0))
        other = kinds.get("refund", (0, 0))[0] + kinds.get("adjustment", (0, 0))[0]
        days.append(LedgerDay(_day_text(day), credits, charges, other, charge_count, balance))
        balance -= credits + charges + other
    older = await db.fetchone(
        "SELECT 1 FROM ledger INDEXED BY ledger_account_id WHERE account_id = ? "
        "AND created_at_ms < ? LIMIT 1",
        (account_id, start_ms),
    )
    return days, (start_day if older is not None else None)


async def ledger_rows_of_kind(
    db: RowReader, account_id: str, kind: str, *, before_id: int, limit: int
) -> tuple[list[Any], int | None]:
    """Rows of one kind, newest first, and the next page's ``before_id``."""
    rows = await db.fetchall(
        "SELECT id, kind, amount_micros, reference, key_id, request_id, note, created_at_ms "
        "FROM ledger INDEXED BY ledger_account_id WHERE account_id = ? AND kind = ? "
        "AND id < ? ORDER BY id DESC LIMIT ?",
        (account_id, kind, before_id, limit + 1),
    )
    if len(rows) > limit:
        return rows[:limit], int(rows[limit - 1]["id"])
    return rows, None
