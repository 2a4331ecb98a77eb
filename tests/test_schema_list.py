"""The one migration list (relay/storage/schema_list.py) on SQLite.

Its first ten entries are the embedded relay's released migrations: a database written
before the list existed (tests/fixtures/embedded_before_one_list.sql, dumped from the code
of that time) must upgrade in place with no change to its schema, rows or recorded
numbers. The PostgreSQL side is tests/test_cluster_schema.py.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.cluster.pg_copy import MigrateError, open_embedded
from relay.storage.db import Database
from relay.storage.migrations import MIGRATIONS, Migration, MigrationError, apply_migrations
from relay.storage.schema_entry import EngineOnly

FIXTURE = Path(__file__).parent / "fixtures" / "embedded_before_one_list.sql"
RELEASED_BEFORE_ONE_LIST = range(1, 11)
SCHEMA = "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"


@contextlib.contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        yield conn


def _database_from_before_the_one_list(path: Path) -> None:
    with _connect(path) as conn:
        conn.executescript(FIXTURE.read_text())


def _rows(conn: sqlite3.Connection, table: str) -> list[tuple[object, ...]]:
    return conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()


def test_the_list_is_numbered_in_order_with_one_name_each() -> None:
    assert [m.number for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    names = [m.name for m in MIGRATIONS]
    assert len(set(names)) == len(names)


def test_an_entry_that_differs_between_engines_says_why() -> None:
    for migration in MIGRATIONS:
        assert migration.sqlite.strip() or migration.postgresql.strip(), migration.number
        one_engine = not migration.sqlite.strip() or not migration.postgresql.strip()
        declares = (
            migration.sqlite_only != EngineOnly() or migration.postgresql_only != EngineOnly()
        )
        if one_engine or declares:
            assert migration.why_engines_differ.strip(), migration.number
        else:
            assert not migration.why_engines_differ, migration.number


def test_fresh_sqlite_is_exactly_the_schema_the_released_migrations_made(tmp_path: Path) -> None:
    _database_from_before_the_one_list(tmp_path / "old.db")
    released = [m for m in MIGRATIONS if m.number in RELEASED_BEFORE_ONE_LIST]
    with _connect(tmp_path / "old.db") as old, _connect(tmp_path / "new.db") as new:
        apply_migrations(new, released)
        assert new.execute(SCHEMA).fetchall() == old.execute(SCHEMA).fetchall()


def test_a_database_from_before_the_one_list_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    _database_from_before_the_one_list(path)
    with _connect(path) as conn:
        schema = conn.execute(SCHEMA).fetchall()
        recorded = _rows(conn, "schema_migrations")
        assert [row[0] for row in recorded] == list(RELEASED_BEFORE_ONE_LIST)
        data = {table: _rows(conn, table) for table in ("accounts", "ledger", "usage")}
        assert all(data.values())

        applied = apply_migrations(conn, now_ms=42)

        later = [m.number for m in MIGRATIONS if m.number not in RELEASED_BEFORE_ONE_LIST]
        assert applied == later
        # The released part of its schema is untouched but for the ledger table's own
        # definition, which entry 18 rewrites (its kind check: tests/test_schema_ledger_check.py);
        # later entries only add to it, and the result is what a fresh database gets.
        upgraded = conn.execute(SCHEMA).fetchall()
        rewritten = {row for row in schema if row[:2] == ("table", "ledger")}
        assert len(rewritten) == 1
        assert set(schema) - rewritten <= set(upgraded)
        with _connect(tmp_path / "fresh.db") as fresh:
            apply_migrations(fresh)
            assert upgraded == fresh.execute(SCHEMA).fetchall()
        assert {table: _rows(conn, table) for table in data} == data
        now_recorded = _rows(conn, "schema_migrations")
        assert now_recorded[: len(recorded)] == recorded
        assert now_recorded[len(recorded) :] == [(n, MIGRATIONS[n - 1].name, 42) for n in later]
        assert apply_migrations(conn) == []


async def test_relay_opens_a_database_from_before_the_one_list(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    _database_from_before_the_one_list(path)
    db = await Database.open(path, flush_interval_s=0.001)
    try:
        rows = await db.fetchall("SELECT number FROM schema_migrations ORDER BY number")
        accounts = await db.fetchall("SELECT name FROM accounts")
    finally:
        await db.close()
    assert [r["number"] for r in rows] == [m.number for m in MIGRATIONS]
    assert [r["name"] for r in accounts] == ["acme"]


def test_a_postgresql_only_entry_is_recorded_on_sqlite_and_runs_nothing(tmp_path: Path) -> None:
    later = len(MIGRATIONS) + 1
    appended = Migration(
        later,
        "postgresql only",
        "",
        "CREATE TABLE only_there (x bigint);",
        postgresql_only=EngineOnly(tables=("only_there",)),
        why_engines_differ="a test",
    )
    with _connect(tmp_path / "relay.db") as conn:
        apply_migrations(conn)
        schema = conn.execute(SCHEMA).fetchall()
        assert apply_migrations(conn, [*MIGRATIONS, appended]) == [later]
        assert conn.execute(SCHEMA).fetchall() == schema
        recorded = conn.execute("SELECT name FROM schema_migrations WHERE number = ?", (later,))
        assert recorded.fetchall() == [("postgresql only",)]


def test_an_entry_of_the_list_that_fails_on_sqlite_leaves_nothing(tmp_path: Path) -> None:
    later = len(MIGRATIONS) + 1
    broken = Migration(later, "broken", "CREATE TABLE half (x INTEGER); NOT SQL;", "SELECT 1;")
    with _connect(tmp_path / "relay.db") as conn:
        apply_migrations(conn)
        with pytest.raises(MigrationError, match=rf"migration {later} \(broken\) failed"):
            apply_migrations(conn, [*MIGRATIONS, broken])
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        numbers = [r[0] for r in conn.execute("SELECT number FROM schema_migrations")]
    assert "half" not in tables
    assert numbers == [m.number for m in MIGRATIONS]


def test_relay_migrate_reads_a_database_lacking_only_postgresql_entries(tmp_path: Path) -> None:
    """Entries 11-13 change nothing on SQLite: not recording them is no reason to refuse."""
    path = tmp_path / "relay.db"
    with _connect(path) as conn:
        apply_migrations(conn)
        postgresql_only = [m.number for m in MIGRATIONS if not m.sqlite.strip()]
        assert postgresql_only
        for number in postgresql_only:  # as if written before those entries existed
            conn.execute("DELETE FROM schema_migrations WHERE number = ?", (number,))
    open_embedded(path).close()


def test_relay_migrate_asks_for_one_start_of_a_database_from_before_the_one_list(
    tmp_path: Path,
) -> None:
    # Entry 14 adds indexes on SQLite too: the copy needs the database this relay serves.
    path = tmp_path / "relay.db"
    _database_from_before_the_one_list(path)
    with pytest.raises(MigrateError, match="run this relay's `relay serve` on it once"):
        open_embedded(path)
    with _connect(path) as conn:
        apply_migrations(conn)
    open_embedded(path).close()


def test_relay_migrate_refuses_a_database_missing_an_sqlite_entry(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    with _connect(path) as conn:
        apply_migrations(conn, MIGRATIONS[:9])
    with pytest.raises(MigrateError, match=r"schema migrations \[1, .*, 9\] differ"):
        open_embedded(path)
    later = len(MIGRATIONS) + 1
    with _connect(path) as conn:
        apply_migrations(conn, [*MIGRATIONS, Migration(later, "from the future", "SELECT 1;")])
    with pytest.raises(MigrateError, match=f"{later}\\] differ"):
        open_embedded(path)
