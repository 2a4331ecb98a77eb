"""Copy an embedded (SQLite) database into PostgreSQL: what ``relay migrate --to`` runs.

The rule: ONE PostgreSQL transaction. The schema is applied (``pg_schema.migrate``), the
target must hold no relay rows, every embedded table is copied with COPY in dependency
order from one SQLite read transaction (a consistent snapshot), each ``bigserial``
sequence is moved past the copied ids, then ``relay.cluster.pg_verify`` compares both
sides. Only a clean verification commits; any mismatch or error rolls everything back,
so the target is either a verified copy or as empty as before (run it again).

Values pass through unchanged: SQLite integers arrive as Python ints and are bound as
``bigint`` (no float anywhere, so a micro-USD amount beyond 2^53 stays exact); text as
text. The ledger's insert trigger sums the copied rows into ``accounts.balance_micros``
and ``api_keys.spent_micros`` (the mapping is in ``relay.storage.schema_core``).

Nothing in flight needs converting: holds live only in a running relay's memory, so a
stopped embedded database has none. Unfinished video jobs (queued/in_progress, no charge
yet) and undelivered alert-outbox rows are copied with their state and counted in the
report, for the job runner on PostgreSQL to resume as the embedded poller does after a
restart (docs/scaling.md §6).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from relay.cluster.pg_archive_import import import_archives
from relay.cluster.pg_schema import migrate
from relay.cluster.pg_verify import MigrationReport, verify_copy
from relay.storage.migrations import MIGRATIONS as EMBEDDED_MIGRATIONS

__all__ = [
    "COPY_ORDER",
    "MigrateError",
    "copy_database",
    "embedded_columns",
    "open_embedded",
]

# Every embedded table, each after the tables its foreign keys name.
COPY_ORDER: tuple[str, ...] = (
    "accounts",
    "api_keys",
    "ledger",
    "usage",
    "usage_daily",
    "audit",
    "meta",
    "archives",
    "video_jobs",
    "alert_outbox",
    "console_users",
    "console_memberships",
    "console_sessions",
    "console_invites",
    "console_key_creators",
    "console_tickets",
    "console_ticket_messages",
    "console_password_resets",
    "payments",
    "payment_events",
    "receipts",
    "payment_customers",
    "auto_topups",
    "billing_mail",
    "notices",
    "deletion_requests",
)
# The copied tables whose id is a bigserial: its sequence must continue after the copied ids.
_SERIAL_TABLES = """
SELECT table_name FROM information_schema.columns
 WHERE table_schema = current_schema() AND column_name = 'id'
   AND column_default LIKE 'nextval(%'
"""
# Bookkeeping of each engine, never copied; PostgreSQL's cluster-only tables must be empty.
_NOT_COPIED = frozenset({"schema_migrations", "sqlite_sequence"})
# budget_spend: counters rebuilt from the ledger by the first hold of each period.
_CLUSTER_ONLY = ("holds", "abandoned_holds", "archive_chunks", "budget_spend")
_BATCH_ROWS = 5000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

BeforeVerify = Callable[[Any], Awaitable[None]]


class MigrateError(RuntimeError):
    """The copy cannot start or did not verify (then ``report`` says why); nothing was
    committed."""

    def __init__(self, message: str, report: MigrationReport | None = None) -> None:
        super().__init__(message)
        self.report = report


def open_embedded(path: Path) -> sqlite3.Connection:
    """The embedded database, read in one transaction (a snapshot) by the caller.

    Refuses a file that does not exist (sqlite3 would create one) and a schema this
    relay does not know or that is not fully migrated (start relay once on it first).
    """
    if not path.is_file():
        raise MigrateError(f"{path}: no such database file")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        done = {row[0] for row in conn.execute("SELECT number FROM schema_migrations")}
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise MigrateError(f"{path}: not a relay database ({exc})") from exc
    known = {migration.number for migration in EMBEDDED_MIGRATIONS}
    # An entry with no SQLite script changes nothing here: a database written before it
    # (by the previous release, never served since) is as complete as one that records it.
    needed = {migration.number for migration in EMBEDDED_MIGRATIONS if migration.sqlite}
    if not needed <= done <= known:
        conn.close()
        raise MigrateError(
            f"{path}: schema migrations {sorted(done)} differ from this relay's "
            f"{sorted(known)}: run this relay's `relay serve` on it once (then stop it), "
            "or use the relay version that wrote it"
        )
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    unknown = tables - set(COPY_ORDER) - _NOT_COPIED
    if unknown:
        conn.close()
        raise MigrateError(f"{path}: tables this relay cannot copy: {sorted(unknown)}")
    return conn


def embedded_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [str(row[1]) for row in conn.execute(f'PRAGMA table_info("{table}")')]


def _copied_columns(conn: sqlite3.Connection) -> dict[str, list[str]]:
    return {table: embedded_columns(conn, table) for table in COPY_ORDER}


async def copy_database(
    source: sqlite3.Connection,
    target: Any,
    *,
    audit_key: bytes | None,
    before_verify: BeforeVerify | None = None,
    archive_dir: Path | None = None,
) -> MigrationReport:
    """Copy ``source`` (sqlite3, autocommit) into ``target`` (an asyncpg connection).

    Commits only when the verification passes; raises ``MigrateError`` (rolled back)
    otherwise, carrying the report. ``audit_key`` checks the audit chain on both sides
    (None: no server secret, reported as not verified). ``before_verify`` runs on the
    target's transaction between copy and verification (tests tamper there to prove the
    verifier catches it). ``archive_dir``: the embedded archive files, stored in
    PostgreSQL with their records (``pg_archive_import``).
    """
    await migrate(target)
    source.execute("BEGIN")  # one read snapshot for copy and verification
    try:
        transaction = target.transaction()
        await transaction.start()
        try:
            await _refuse_non_empty(target)
            for table in COPY_ORDER:
                await _copy_table(source, target, table)
            archive_problems = (
                [] if archive_dir is None else await import_archives(source, target, archive_dir)
            )
            for table in await _serial_tables(target):
                await target.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) "
                    f"FROM {table} HAVING max(id) IS NOT NULL"
                )
            # The copied usage_daily already counts the copied rows: the rollup starts after.
            await target.execute(
                "UPDATE usage_rollup"
                " SET rolled_through_id = (SELECT COALESCE(max(id), 0) FROM usage)"
            )
            if before_verify is not None:
                await before_verify(target)
            report = await verify_copy(source, target, _copied_columns(source), audit_key=audit_key)
            report.problems.extend(archive_problems)
        except BaseException:
            await transaction.rollback()
            raise
        if not report.ok:
            await transaction.rollback()
            raise MigrateError(report.summary(), report)
        await transaction.commit()
    finally:
        source.execute("ROLLBACK")
    report.committed = True
    return report


async def _serial_tables(target: Any) -> list[str]:
    return [row[0] for row in await target.fetch(_SERIAL_TABLES) if row[0] in COPY_ORDER]


async def _refuse_non_empty(target: Any) -> None:
    for table in (*COPY_ORDER, *_CLUSTER_ONLY):
        if await target.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"):
            raise MigrateError(
                f"the target database already holds relay rows (table {table}): migrate "
                "into a new, empty database (createdb), or drop and recreate this one"
            )


async def _copy_table(source: sqlite3.Connection, target: Any, table: str) -> None:
    columns = embedded_columns(source, table)
    cursor = source.execute(f'SELECT * FROM "{table}"')
    extra: list[str] = []
    if table == "ledger":
        # The money schema's timestamptz beside the embedded milliseconds: the same instant.
        extra = ["created_at"]
    at = columns.index("created_at_ms") if extra else -1
    while batch := cursor.fetchmany(_BATCH_ROWS):
        records = list(_records(batch, at))
        await target.copy_records_to_table(table, records=records, columns=columns + extra)


def _records(rows: list[tuple[Any, ...]], created_at_index: int) -> Iterator[tuple[Any, ...]]:
    for row in rows:
        if created_at_index < 0:
            yield row
        else:
            yield (*row, _EPOCH + timedelta(milliseconds=row[created_at_index]))
