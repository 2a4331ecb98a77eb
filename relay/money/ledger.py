"""The ledger in SQLite: appending rows, and rebuilding the wallet from them at start-up.

The ledger is append-only (triggers refuse UPDATE and DELETE); a balance is the sum of
an account's rows and a key's spend the sum of its charges, so the in-memory wallet
is always rebuilt from here, never from a cached figure.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from relay.money.budget import BUDGET_PERIODS, BudgetPeriod
from relay.money.wallet import LedgerEntry, Wallet
from relay.storage.db import Database
from relay.storage.reader import RowReader

__all__ = [
    "LEDGER_INSERT_HEAD",
    "charged_since",
    "insert_entry",
    "ledger_page",
    "ledger_view",
    "load_account_budget",
    "load_wallet",
]

# The columns in ``LedgerEntry``'s field order: a row is ``msgspec.structs.astuple(entry)``.
LEDGER_INSERT_HEAD = (
    "INSERT INTO ledger (account_id, kind, amount_micros, reference, key_id, request_id, "
    "note, created_at_ms)"
)
_INSERT = f"{LEDGER_INSERT_HEAD} VALUES (?, ?, ?, ?, ?, ?, ?, ?)"


def insert_entry(conn: sqlite3.Connection, entry: LedgerEntry) -> None:
    conn.execute(
        _INSERT,
        (
            entry.account_id,
            entry.kind,
            entry.amount_micros,
            entry.reference,
            entry.key_id,
            entry.request_id,
            entry.note,
            entry.created_at_ms,
        ),
    )


async def load_wallet(db: Database, wallet: Wallet) -> None:
    """Load every account and key into ``wallet`` with balances summed from the ledger."""
    balances = {
        row["account_id"]: row["balance"]
        for row in await db.fetchall(
            "SELECT account_id, SUM(amount_micros) AS balance FROM ledger GROUP BY account_id"
        )
    }
    references: dict[str, list[str]] = {}
    for row in await db.fetchall(
        "SELECT account_id, reference FROM ledger WHERE kind IN ('credit', 'refund')"
    ):
        references.setdefault(row["account_id"], []).append(row["reference"])
    for row in await db.fetchall("SELECT id, mode, credit_limit_micros FROM accounts"):
        wallet.load_account(
            row["id"],
            mode=row["mode"],
            credit_limit_micros=row["credit_limit_micros"],
            balance_micros=balances.get(row["id"], 0),
            references=references.get(row["id"], ()),
        )
    spent = {
        row["key_id"]: -row["charged"]
        for row in await db.fetchall(
            "SELECT key_id, SUM(amount_micros) AS charged FROM ledger "
            "WHERE kind = 'charge' AND key_id IS NOT NULL GROUP BY key_id"
        )
    }
    for row in await db.fetchall(
        "SELECT id, account_id, spend_cap_micros, budget_period FROM api_keys"
    ):
        wallet.load_key(
            row["id"],
            row["account_id"],
            spend_cap_micros=row["spend_cap_micros"],
            spent_micros=spent.get(row["id"], 0),
        )
        period = _period(row["budget_period"])
        if period is not None:
            since = wallet.period_bounds(period)[0]
            in_period = await charged_since(db, since, key_id=row["id"])
            wallet.set_key_budget_period(row["id"], period, in_period)
    for row in await db.fetchall(
        "SELECT id, budget_micros, budget_period FROM accounts WHERE budget_micros > 0"
    ):
        await load_account_budget(db, wallet, row["id"], row["budget_micros"], row["budget_period"])


def _period(value: str | None) -> BudgetPeriod | None:
    for period in BUDGET_PERIODS:
        if value == period:
            return period
    return None


async def load_account_budget(
    db: Database, wallet: Wallet, account_id: str, budget_micros: int, period: str | None
) -> None:
    """Give the wallet an account's budget with its spend summed from the ledger."""
    budget_period = _period(period)
    lifetime = await charged_since(db, 0, account_id=account_id)
    in_period = lifetime
    if budget_period is not None:
        since = wallet.period_bounds(budget_period)[0]
        in_period = await charged_since(db, since, account_id=account_id)
    wallet.set_account_budget(
        account_id,
        budget_micros,
        budget_period,
        spent_micros=lifetime,
        period_spent_micros=in_period,
    )


async def charged_since(
    db: Database, since_ms: int, *, key_id: str | None = None, account_id: str | None = None
) -> int:
    """Micro-USD charged to a key or an account from ``since_ms`` on (committed rows only:
    flush the writer first when charges may still be queued)."""
    column, value = ("key_id", key_id) if key_id is not None else ("account_id", account_id)
    row = await db.fetchone(
        f"SELECT -COALESCE(SUM(amount_micros), 0) FROM ledger "
        f"WHERE kind = 'charge' AND {column} = ? AND created_at_ms >= ?",
        (value, since_ms),
    )
    return int(row[0]) if row else 0


async def ledger_page(
    reader: RowReader, account_id: str, *, before_id: int, limit: int
) -> list[dict[str, Any]]:
    """An account's rows newest first, ``limit`` of them below ``before_id`` (either engine)."""
    rows = await reader.fetchall(
        "SELECT * FROM ledger WHERE account_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
        (account_id, before_id, limit),
    )
    return [ledger_view(row) for row in rows]


def ledger_view(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "account_id": row["account_id"],
        "kind": row["kind"],
        "amount_micros": row["amount_micros"],
        "reference": row["reference"],
        "key_id": row["key_id"],
        "request_id": row["request_id"],
        "note": row["note"],
        "created_at_ms": row["created_at_ms"],
    }
