"""Schema migrations of relay's SQLite file, applied at start-up.

The list is ``relay.storage.schema_list.MIGRATIONS``: one ordered list for both engines,
each entry numbered, with a SQLite and a PostgreSQL script. ``apply_migrations`` runs every
entry the database has not recorded yet, each inside its own ``BEGIN IMMEDIATE``
transaction together with its row in ``schema_migrations``, so a crash mid-way leaves
either the whole migration or none of it. An entry for PostgreSQL only has an empty SQLite
script: it is recorded all the same, so both engines' tables list the same numbers.
Applying twice is a no-op. A database that records a migration number newer than this code
knows is refused with ``MigrationError``: running old code against a newer schema could
silently corrupt money data.

Conventions of the schema: times are integer unix milliseconds (``*_ms``), money is integer
micro-USD (``*_micros``), multipliers are decimal strings. Never edit a released migration;
append a new one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from relay.storage.schema_entry import (
    Migration,
    MigrationError,
    check_numbering,
    refuse_newer_database,
)
from relay.storage.schema_entry import now_ms as current_ms
from relay.storage.schema_list import MIGRATIONS

__all__ = [
    "MIGRATIONS",
    "Migration",
    "MigrationError",
    "applied_migrations",
    "apply_migrations",
    "split_statements",
]

_CREATE_TRACKING_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    number INTEGER PRIMARY KEY,
    name TEXT,
    applied_at_ms INTEGER
)
"""


def split_statements(script: str) -> list[str]:
    """Split an SQL script into single statements (trigger bodies stay whole).

    ``executescript`` would commit any open transaction first, so migrations run their
    statements one by one inside a transaction we control instead.
    """
    statements: list[str] = []
    current = ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if _has_code(current):
                statements.append(current.strip())
            current = ""
    if _has_code(current.removesuffix(";")):
        raise MigrationError(f"incomplete SQL statement in migration: {current.strip()[:60]!r}")
    return statements


def _has_code(sql: str) -> bool:
    code_lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return bool("".join(code_lines).strip(" \t\n;"))


def applied_migrations(conn: sqlite3.Connection) -> list[int]:
    """Numbers of the migrations recorded in ``conn``'s database, ascending."""
    rows = conn.execute("SELECT number FROM schema_migrations ORDER BY number").fetchall()
    return [int(row[0]) for row in rows]


def apply_migrations(
    conn: sqlite3.Connection,
    migrations: Sequence[Migration] = MIGRATIONS,
    *,
    now_ms: int | None = None,
) -> list[int]:
    """Apply the migrations ``conn`` has not seen yet; return the numbers applied.

    ``conn`` must be in autocommit mode (``isolation_level=None``) with no open
    transaction. Raises ``MigrationError`` if the database is newer than ``migrations``.
    """
    check_numbering(migrations)
    conn.execute(_CREATE_TRACKING_TABLE)
    done = set(applied_migrations(conn))
    refuse_newer_database(done, migrations)
    applied: list[int] = []
    for migration in migrations:
        if migration.number not in done:
            _apply_one(conn, migration, now_ms)
            applied.append(migration.number)
    return applied


def _apply_one(conn: sqlite3.Connection, migration: Migration, now_ms: int | None) -> None:
    applied_at_ms = now_ms if now_ms is not None else current_ms()
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in split_statements(migration.sqlite):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO schema_migrations (number, name, applied_at_ms) VALUES (?, ?, ?)",
            (migration.number, migration.name, applied_at_ms),
        )
        conn.execute("COMMIT")
    except BaseException as exc:
        # Leave the database exactly as it was before this migration started.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise MigrationError(
                f"migration {migration.number} ({migration.name}) failed: {exc}"
            ) from exc
        raise
