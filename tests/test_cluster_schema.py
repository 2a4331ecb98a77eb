"""The one migration list on PostgreSQL, against a real, throwaway PostgreSQL.

Both engines built from scratch by the list must have the same tables, columns and
indexes, except exactly what the entries declare engine-specific (a declaration naming
something that is not there fails too, so declarations stay true). Both record the same
numbers. A database of the development schema (migrations recorded by name) is refused
with the instruction to recreate it; a failing entry leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from relay.cli.migrate import run_migration
from relay.cluster.pg_copy import MigrateError
from relay.cluster.pg_schema import migrate
from relay.cluster.pg_usage import RESPONSE_OWNER_SQL
from relay.storage.migrations import MIGRATIONS, Migration, MigrationError, apply_migrations

asyncpg = pytest.importorskip("asyncpg")

TRACKING = "schema_migrations"


class Schema(NamedTuple):
    tables: set[str]
    columns: set[str]  # table.column
    indexes: dict[str, str]  # index name: its table

    def without_tables(self, tables: set[str]) -> Schema:
        return Schema(
            self.tables - tables,
            {c for c in self.columns if c.split(".")[0] not in tables},
            {i: t for i, t in self.indexes.items() if t not in tables},
        )


def _sqlite_schema(conn: sqlite3.Connection) -> Schema:
    tables = {
        r[0]
        for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if not r[0].startswith("sqlite_") and r[0] != TRACKING
    }
    columns = {f"{t}.{r[1]}" for t in tables for r in conn.execute(f'PRAGMA table_info("{t}")')}
    # Named indexes only: those behind PRIMARY KEY / UNIQUE are sqlite_autoindex_* (no sql).
    rows = conn.execute(
        "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
    )
    return Schema(tables, columns, {r[0]: r[1] for r in rows if r[1] != TRACKING})


async def _postgresql_schema(conn: Any) -> Schema:
    rows = await conn.fetch(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' AND table_name <> $1",
        TRACKING,
    )
    tables = {r["table_name"] for r in rows}
    rows = await conn.fetch(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name <> $1",
        TRACKING,
    )
    columns = {f"{r['table_name']}.{r['column_name']}" for r in rows}
    # Named indexes only: those behind PRIMARY KEY / UNIQUE constraints carry their name.
    rows = await conn.fetch(
        "SELECT indexname, tablename FROM pg_indexes WHERE schemaname = 'public' "
        "AND tablename <> $1 AND indexname NOT IN "
        "(SELECT conname FROM pg_constraint WHERE connamespace = 'public'::regnamespace)",
        TRACKING,
    )
    return Schema(tables, columns, {r["indexname"]: r["tablename"] for r in rows})


def _declared(side: str) -> Schema:
    tables: set[str] = set()
    columns: set[str] = set()
    indexes: set[str] = set()
    for migration in MIGRATIONS:
        only = migration.sqlite_only if side == "sqlite" else migration.postgresql_only
        tables |= set(only.tables)
        columns |= set(only.columns)
        indexes |= set(only.indexes)
    return Schema(tables, columns, dict.fromkeys(indexes, ""))


@pytest.fixture
async def pg(pg_database: str) -> AsyncIterator[Any]:
    conn = await asyncpg.connect(pg_database)
    try:
        yield conn
    finally:
        await conn.close()


async def test_both_engines_from_scratch_differ_only_where_an_entry_says(
    tmp_path: Path, pg: Any
) -> None:
    with contextlib.closing(sqlite3.connect(tmp_path / "e.db", isolation_level=None)) as lite:
        apply_migrations(lite)
        sqlite = _sqlite_schema(lite)
    await migrate(pg)
    postgresql = await _postgresql_schema(pg)
    only_sqlite, only_postgresql = _declared("sqlite"), _declared("postgresql")

    assert sqlite.tables - postgresql.tables == only_sqlite.tables
    assert postgresql.tables - sqlite.tables == only_postgresql.tables
    # Within the tables both have: every column and index on both, or declared.
    sqlite = sqlite.without_tables(only_sqlite.tables)
    postgresql = postgresql.without_tables(only_postgresql.tables)
    assert sqlite.columns - postgresql.columns == only_sqlite.columns
    assert postgresql.columns - sqlite.columns == only_postgresql.columns
    assert set(sqlite.indexes) - set(postgresql.indexes) == set(only_sqlite.indexes)
    assert set(postgresql.indexes) - set(sqlite.indexes) == set(only_postgresql.indexes)
    # An index of one name is on the same table on both engines.
    for name in set(sqlite.indexes) & set(postgresql.indexes):
        assert sqlite.indexes[name] == postgresql.indexes[name], name


async def test_both_engines_record_the_same_numbers_and_names(tmp_path: Path, pg: Any) -> None:
    with contextlib.closing(sqlite3.connect(tmp_path / "e.db", isolation_level=None)) as lite:
        apply_migrations(lite)
        embedded = lite.execute(f"SELECT number, name FROM {TRACKING} ORDER BY number").fetchall()
    assert await migrate(pg) == [m.number for m in MIGRATIONS]
    assert await migrate(pg) == []
    rows = await pg.fetch(f"SELECT number, name FROM {TRACKING} ORDER BY number")
    assert [(r["number"], r["name"]) for r in rows] == embedded
    assert embedded == [(m.number, m.name) for m in MIGRATIONS]


async def _development_schema(pg: Any) -> None:
    """What the development versions of cluster mode left: migrations recorded by name."""
    await pg.execute(
        "CREATE TABLE relay_migrations (name text PRIMARY KEY, "
        "applied_at timestamptz NOT NULL DEFAULT now());"
        "CREATE TABLE accounts (id text PRIMARY KEY);"
        "INSERT INTO relay_migrations (name) VALUES ('0001_money'), ('0002_holds_and_leases')"
    )


async def test_a_database_of_the_development_schema_is_refused(pg: Any) -> None:
    await _development_schema(pg)
    with pytest.raises(MigrationError, match="drop and recreate the database"):
        await migrate(pg)
    assert await pg.fetchval(f"SELECT to_regclass('{TRACKING}')") is None
    columns = await pg.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'accounts'"
    )
    assert [r["column_name"] for r in columns] == ["id"]  # untouched


async def test_relay_migrate_into_a_development_schema_is_a_clear_error(
    tmp_path: Path, pg: Any, pg_database: str
) -> None:
    database = tmp_path / "relay.db"
    with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as lite:
        apply_migrations(lite)
    await _development_schema(pg)
    with pytest.raises(MigrateError, match="development version of cluster mode") as refused:
        await run_migration(database, pg_database, tmp_path / "relay.db.secret")
    assert refused.value.report is None  # nothing was copied


async def test_a_failing_postgresql_entry_leaves_nothing(pg: Any) -> None:
    later = len(MIGRATIONS) + 1
    broken = Migration(later, "broken", "SELECT 1;", "CREATE TABLE half (x int); NOT SQL;")
    with pytest.raises(asyncpg.PostgresSyntaxError):
        await migrate(pg, [*MIGRATIONS, broken])
    # The whole walk is one transaction: not even the first entries stayed.
    assert await pg.fetchval("SELECT to_regclass('accounts')") is None
    assert await pg.fetchval(f"SELECT to_regclass('{TRACKING}')") is None

    await migrate(pg)
    with pytest.raises(asyncpg.PostgresSyntaxError):
        await migrate(pg, [*MIGRATIONS, broken])
    assert await pg.fetchval("SELECT to_regclass('half')") is None
    numbers = await pg.fetch(f"SELECT number FROM {TRACKING} ORDER BY number")
    assert [r["number"] for r in numbers] == [m.number for m in MIGRATIONS]


async def test_an_sqlite_only_entry_is_recorded_and_a_newer_database_refused(pg: Any) -> None:
    later = len(MIGRATIONS) + 1
    sqlite_only = Migration(later, "sqlite only", "CREATE TABLE only_here (x INTEGER);", "")
    assert await migrate(pg, [*MIGRATIONS, sqlite_only]) == [m.number for m in MIGRATIONS] + [later]
    assert await pg.fetchval("SELECT to_regclass('only_here')") is None
    with pytest.raises(MigrationError, match=f"schema is at migration {later}"):
        await migrate(pg)


async def test_the_lookups_any_caller_can_trigger_search_an_index(pg: Any) -> None:
    # A stored response's owner (any client, any id) and an alert's re-arm check: with
    # sequential scans priced out, the plan must name the index entry 14 made.
    await migrate(pg)
    async with pg.transaction():
        await pg.execute("SET LOCAL enable_seqscan = off")
        owner = await pg.fetch("EXPLAIN " + RESPONSE_OWNER_SQL, "acct_a", "resp_unknown")
        assert "usage_responses" in "\n".join(row[0] for row in owner)
        rearm = await pg.fetch(
            "EXPLAIN SELECT 1 FROM alert_outbox WHERE sink_index = $1 AND event = $2"
            " AND subject = $3 AND created_at_ms > $4",
            0,
            "provider_cooling",
            "openai",
            0,
        )
        assert "alert_outbox_rearm" in "\n".join(row[0] for row in rearm)
