"""Verify a copy of an embedded database in PostgreSQL (``relay migrate``'s last step).

What is compared, each side read in its own transaction (the copy's, before it commits):

- **every table**: the row count, and a digest of every row's values (the embedded
  columns, each row encoded and hashed, the hashes summed modulo 2^256 so the order
  rows come back in does not matter): the same count and digest mean the same rows,
  value for value;
- **money**: per account, the embedded ledger sum, PostgreSQL's ledger sum and the
  balance PostgreSQL's trigger maintained must be one number; per key, the embedded
  charges (what ``relay.money.ledger.load_wallet`` sums) and ``api_keys.spent_micros``;
- **the audit chain**: ``relay.identity.audit.verify_chain`` (the verifier ``relay audit
  verify`` uses) over PostgreSQL's rows must give the embedded chain's verdict.

Also reported, not compared: the unfinished video jobs and undelivered outbox rows that
were copied with their state (what the first cluster instance's runner will carry on).
"""

from __future__ import annotations

import hashlib
import sqlite3
from typing import Any

import msgspec

from relay.identity.audit import AUDIT_COLUMNS, ChainReport, verify_chain

__all__ = ["MigrationReport", "TableCheck", "verify_copy"]

_encode = msgspec.json.Encoder().encode
_DIGEST_MODULUS = 2**256


class TableCheck(msgspec.Struct):
    table: str
    embedded_rows: int
    postgres_rows: int
    same_values: bool

    @property
    def ok(self) -> bool:
        return self.embedded_rows == self.postgres_rows and self.same_values


class MigrationReport(msgspec.Struct):
    tables: list[TableCheck]
    accounts: int
    ledger_total_micros: int
    keys: int
    audit_rows: int
    audit_chain_ok: bool | None  # None: not checked (no server secret)
    unfinished_video_jobs: int
    undelivered_alerts: int
    problems: list[str]
    committed: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        lines = [
            f"{check.table:<26} {check.embedded_rows:>9} rows  {'ok' if check.ok else 'MISMATCH'}"
            for check in self.tables
        ]
        chain = {None: "not verified", True: "verifies", False: "BROKEN"}[self.audit_chain_ok]
        lines += [
            f"ledger: {self.accounts} accounts, total {self.ledger_total_micros} micros; "
            f"{self.keys} keys",
            f"audit chain: {self.audit_rows} rows, {chain}",
            f"carried over: {self.unfinished_video_jobs} unfinished video jobs, "
            f"{self.undelivered_alerts} undelivered alerts",
        ]
        lines += [f"problem: {problem}" for problem in self.problems]
        verdict = "verified and committed" if self.committed else "NOT committed"
        if self.ok and not self.committed:
            verdict = "verified"
        lines.append(f"migration {verdict}")
        return "\n".join(lines)


async def verify_copy(
    source: sqlite3.Connection,
    target: Any,
    columns: dict[str, list[str]],
    *,
    audit_key: bytes | None,
) -> MigrationReport:
    """Compare ``source`` (sqlite3, inside a read transaction) with ``target`` (asyncpg,
    inside the copy's transaction); every difference is a line in ``problems``."""
    problems: list[str] = []
    tables = [await _check_table(source, target, table, cols) for table, cols in columns.items()]
    problems += [
        f"{check.table}: {check.embedded_rows} rows embedded, {check.postgres_rows} in "
        f"PostgreSQL{'' if check.same_values else ', values differ'}"
        for check in tables
        if not check.ok
    ]
    accounts, total = await _check_balances(source, target, problems)
    keys = await _check_key_spend(source, target, problems)
    audit_rows, chain_ok = await _check_audit(source, target, audit_key, problems)
    return MigrationReport(
        tables=tables,
        accounts=accounts,
        ledger_total_micros=total,
        keys=keys,
        audit_rows=audit_rows,
        audit_chain_ok=chain_ok,
        unfinished_video_jobs=_count(
            source, "SELECT COUNT(*) FROM video_jobs WHERE status IN ('queued', 'in_progress')"
        ),
        undelivered_alerts=_count(
            source,
            "SELECT COUNT(*) FROM alert_outbox "
            "WHERE delivered_at_ms IS NULL AND failed_at_ms IS NULL",
        ),
        problems=problems,
    )


def _count(source: sqlite3.Connection, sql: str) -> int:
    return int(source.execute(sql).fetchone()[0])


def _row_digest(row: tuple[Any, ...]) -> int:
    return int.from_bytes(hashlib.sha256(_encode(row)).digest())


async def _check_table(
    source: sqlite3.Connection, target: Any, table: str, columns: list[str]
) -> TableCheck:
    quoted = ", ".join('"' + column + '"' for column in columns)
    select = f"SELECT {quoted} FROM {table}"
    embedded_rows = embedded_digest = 0
    for row in source.execute(select):
        embedded_rows += 1
        embedded_digest = (embedded_digest + _row_digest(tuple(row))) % _DIGEST_MODULUS
    postgres_rows = postgres_digest = 0
    async for record in target.cursor(select, prefetch=1000):
        postgres_rows += 1
        postgres_digest = (postgres_digest + _row_digest(tuple(record))) % _DIGEST_MODULUS
    return TableCheck(table, embedded_rows, postgres_rows, embedded_digest == postgres_digest)


async def _check_balances(
    source: sqlite3.Connection, target: Any, problems: list[str]
) -> tuple[int, int]:
    embedded = {
        str(account): int(total)
        for account, total in source.execute(
            "SELECT a.id, (SELECT COALESCE(SUM(amount_micros), 0) FROM ledger AS l"
            " WHERE l.account_id = a.id) FROM accounts AS a"
        )
    }
    # SUM(bigint) is numeric in PostgreSQL (asyncpg: Decimal); as text it converts exactly.
    rows = await target.fetch(
        "SELECT a.id, a.balance_micros, (SELECT COALESCE(SUM(amount_micros), 0) FROM ledger"
        " AS l WHERE l.account_id = a.id)::text AS ledger_sum FROM accounts AS a"
    )
    postgres = {row["id"]: (int(row["ledger_sum"]), int(row["balance_micros"])) for row in rows}
    for account in sorted(embedded.keys() | postgres.keys()):
        want = embedded.get(account)
        ledger_sum, balance = postgres.get(account, (None, None))
        if not (want == ledger_sum == balance):
            problems.append(
                f"account {account}: embedded ledger sum {want}, PostgreSQL ledger sum "
                f"{ledger_sum}, PostgreSQL balance {balance}"
            )
    return len(embedded), sum(embedded.values())


async def _check_key_spend(source: sqlite3.Connection, target: Any, problems: list[str]) -> int:
    embedded = {
        str(key): int(spent)
        for key, spent in source.execute(
            "SELECT k.id, (SELECT -COALESCE(SUM(amount_micros), 0) FROM ledger AS l"
            " WHERE l.kind = 'charge' AND l.key_id = k.id) FROM api_keys AS k"
        )
    }
    postgres = {
        row["id"]: int(row["spent_micros"])
        for row in await target.fetch("SELECT id, spent_micros FROM api_keys")
    }
    for key in sorted(embedded.keys() | postgres.keys()):
        if embedded.get(key) != postgres.get(key):
            problems.append(
                f"key {key}: embedded spend {embedded.get(key)}, PostgreSQL spent_micros "
                f"{postgres.get(key)}"
            )
    return len(embedded)


async def _check_audit(
    source: sqlite3.Connection, target: Any, key: bytes | None, problems: list[str]
) -> tuple[int, bool | None]:
    query = f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id"
    embedded_rows = [tuple(row) for row in source.execute(query)]
    if key is None:
        if embedded_rows:
            problems.append("audit chain not verified: the server secret was not found")
        return len(embedded_rows), None
    postgres_rows = [tuple(record) for record in await target.fetch(query)]
    before: ChainReport = verify_chain(embedded_rows, key)
    after: ChainReport = verify_chain(postgres_rows, key)
    if after != before:
        problems.append(f"audit chain: embedded {_verdict(before)}, PostgreSQL {_verdict(after)}")
    elif not after.ok:
        problems.append(
            f"audit chain was already broken in the embedded database: {_verdict(before)}"
        )
    return len(postgres_rows), after.ok and before.ok


def _verdict(report: ChainReport) -> str:
    if report.ok:
        return f"verifies ({report.rows} rows)"
    return f"broken at row {report.broken_at} ({report.reason})"
