"""Cluster mode's schema: the one migration list, applied to PostgreSQL at start-up.

The list is ``relay.storage.schema_list.MIGRATIONS``, the embedded relay's too: each entry's
PostgreSQL script runs here, and its number is recorded in ``schema_migrations`` (the same
table, columns and numbers as SQLite's). An entry for SQLite only is recorded all the same.
Instances starting together take turns on an advisory lock, and the whole walk is one
transaction, so each migration runs exactly once and a failure leaves nothing behind.

A database set up by the development versions of cluster mode recorded its migrations by
name (``relay_migrations``: ``0001_money`` … ``0007_payments``), in a different split of
the same tables. Cluster mode was never released with that schema, so it is refused with
the instruction to recreate the database rather than mapped onto the numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from relay.storage.schema_entry import (
    Migration,
    MigrationError,
    check_numbering,
    now_ms,
    refuse_newer_database,
)
from relay.storage.schema_list import MIGRATIONS

__all__ = ["MIGRATIONS", "MigrationError", "migrate"]

# Any constant shared by every instance: the advisory lock that serialises migrations.
_MIGRATION_LOCK = 0x72656C6179  # "relay"

_CREATE_TRACKING_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    number integer PRIMARY KEY,
    name text,
    applied_at_ms bigint
)
"""

_DEVELOPMENT_TRACKING_TABLE = "relay_migrations"


async def migrate(conn: Any, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Apply the migrations this database lacks; returns their numbers.

    Raises ``MigrationError`` for a database newer than ``migrations`` or one set up by a
    development version of cluster mode; the transaction is rolled back on any error."""
    check_numbering(migrations)
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await _refuse_development_schema(conn)
        await conn.execute(_CREATE_TRACKING_TABLE)
        done = {row["number"] for row in await conn.fetch("SELECT number FROM schema_migrations")}
        refuse_newer_database(done, migrations)
        for migration in migrations:
            if migration.number in done:
                continue
            if migration.postgresql:
                await conn.execute(migration.postgresql)
            await conn.execute(
                "INSERT INTO schema_migrations (number, name, applied_at_ms) VALUES ($1, $2, $3)",
                migration.number,
                migration.name,
                now_ms(),
            )
            applied.append(migration.number)
    return applied


async def _refuse_development_schema(conn: Any) -> None:
    if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", _DEVELOPMENT_TRACKING_TABLE):
        raise MigrationError(
            "this PostgreSQL database was set up by a development version of cluster mode "
            f"(its migrations are recorded by name in {_DEVELOPMENT_TRACKING_TABLE}), whose "
            "schema cannot be upgraded in place: drop and recreate the database, then start "
            "relay on it or run `relay migrate --to` again"
        )
