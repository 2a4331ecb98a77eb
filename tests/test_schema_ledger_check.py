"""Migration 18 (relay/storage/schema_ledger_check.py): the ledger rebuilt with its kind
check as comparisons keeps every row, id, counter, index, trigger and rule it had, and its
insert no longer builds a temporary B-tree."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.money.ledger import _INSERT as LEDGER_INSERT
from relay.storage.migrations import MIGRATIONS, apply_migrations

BEFORE = [m for m in MIGRATIONS if m.number < 18]
FROM_18 = [m.number for m in MIGRATIONS if m.number >= 18]
OBJECTS = (
    "SELECT type, name, sql FROM sqlite_master "
    "WHERE tbl_name = 'ledger' AND type <> 'table' ORDER BY type, name"
)


@contextlib.contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA foreign_keys=ON")  # as the writer's connection has it
        yield conn


def _charge(conn: sqlite3.Connection, reference: str, kind: str = "charge") -> None:
    amount = -5 if kind == "charge" else 7
    conn.execute(
        "INSERT INTO ledger (account_id, kind, amount_micros, reference, key_id, request_id, "
        "note, created_at_ms) VALUES ('a', ?, ?, ?, 'k', ?, 'n', 9)",
        (kind, amount, reference, reference),
    )


def _ledger(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
    return conn.execute("SELECT * FROM ledger ORDER BY id").fetchall()


def _counter(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
    return conn.execute(
        "SELECT name, seq FROM sqlite_sequence WHERE name LIKE 'ledger%'"
    ).fetchall()


def test_the_rebuilt_ledger_keeps_its_rows_ids_counter_indexes_and_triggers(
    tmp_path: Path,
) -> None:
    with _connect(tmp_path / "relay.db") as conn:
        apply_migrations(conn, BEFORE)
        conn.execute(
            "INSERT INTO accounts (id, name, mode, created_at_ms, updated_at_ms) "
            "VALUES ('a', 'a', 'prepaid', 0, 0)"
        )
        for n, kind in enumerate(("credit", "charge", "adjustment", "refund", "charge")):
            _charge(conn, f"r{n}", kind)
        # A counter ahead of the largest id (as if rows had gone) must stay ahead.
        conn.execute("UPDATE sqlite_sequence SET seq = 40 WHERE name = 'ledger'")
        rows, objects = _ledger(conn), conn.execute(OBJECTS).fetchall()
        assert len(objects) == 7  # five indexes (migrations 1 and 6), two triggers

        assert apply_migrations(conn) == FROM_18  # 18, then any later entry

        assert _ledger(conn) == rows
        assert conn.execute(OBJECTS).fetchall() == objects
        assert _counter(conn) == [("ledger", 40)]
        _charge(conn, "next")
        assert _ledger(conn)[-1][0] == 41
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


def test_the_rebuilt_ledger_keeps_its_rules(tmp_path: Path) -> None:
    with _connect(tmp_path / "relay.db") as conn:
        apply_migrations(conn)
        conn.execute(
            "INSERT INTO accounts (id, name, mode, created_at_ms, updated_at_ms) "
            "VALUES ('a', 'a', 'prepaid', 0, 0)"
        )
        for kind in ("credit", "charge", "adjustment", "refund"):
            _charge(conn, f"ok-{kind}", kind)
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            _charge(conn, "bad", "bonus")
        with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
            conn.execute(
                "INSERT INTO ledger (account_id, kind, amount_micros, reference, created_at_ms) "
                "VALUES ('a', NULL, 1, 'x', 0)"
            )
        with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
            _charge(conn, "ok-charge")  # one charge per reference
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            conn.execute(
                "INSERT INTO ledger (account_id, kind, amount_micros, reference, created_at_ms) "
                "VALUES ('nobody', 'credit', 1, 'y', 0)"
            )
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE ledger SET amount_micros = 0")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM ledger")
        assert len(_ledger(conn)) == 4


def test_a_ledger_insert_builds_no_temporary_btree(tmp_path: Path) -> None:
    with _connect(tmp_path / "relay.db") as conn:
        apply_migrations(conn, BEFORE)
        params = [None] * LEDGER_INSERT.count("?")
        before = [op[1] for op in conn.execute("EXPLAIN " + LEDGER_INSERT, params)]
        apply_migrations(conn)
        after = [op[1] for op in conn.execute("EXPLAIN " + LEDGER_INSERT, params)]
    assert "OpenEphemeral" in before  # what the migration is for, on this SQLite
    assert "OpenEphemeral" not in after
