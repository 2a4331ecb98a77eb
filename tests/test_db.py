"""Tests for relay.storage.db (the single-writer store) and relay.storage.migrations."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sqlite3
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from relay.storage.batch import PerBatch
from relay.storage.db import Database, DatabaseClosed, WriteQueueFull
from relay.storage.migrations import (
    MIGRATIONS,
    Migration,
    MigrationError,
    apply_migrations,
    split_statements,
)

NOW_MS = 1_700_000_000_000
# The code's own migrations, and the number a test's extra migration takes.
KNOWN = [m.number for m in MIGRATIONS]
NEXT = len(MIGRATIONS) + 1


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "data" / "relay.db")
    yield database
    await database.close()


def put_meta(key: str, value: str = "v") -> Callable[[sqlite3.Connection], None]:
    def insert(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))

    return insert


async def count(db: Database, table: str) -> int:
    row = await db.fetchone(f"SELECT count(*) AS n FROM {table}")
    assert row is not None
    return int(row["n"])


async def add_account(db: Database, account_id: str = "acc_1") -> None:
    await db.execute_write(
        "INSERT INTO accounts (id, name, mode, created_at_ms, updated_at_ms)"
        " VALUES (?, ?, ?, ?, ?)",
        (account_id, f"name-{account_id}", "prepaid", NOW_MS, NOW_MS),
    )


def ledger_insert(
    kind: str, reference: str, account_id: str = "acc_1"
) -> tuple[str, tuple[object, ...]]:
    return (
        "INSERT INTO ledger (account_id, kind, amount_micros, reference, created_at_ms)"
        " VALUES (?, ?, ?, ?, ?)",
        (account_id, kind, 1_000_000, reference, NOW_MS),
    )


class WriterGate:
    """A write that holds the writer's transaction open until released (from the test)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES ('gate', 'held')")
        self.entered.set()
        self.release.wait(5)

    async def wait_entered(self) -> None:
        deadline = time.monotonic() + 5
        while not self.entered.is_set():
            assert time.monotonic() < deadline, "writer never ran the gate"
            await asyncio.sleep(0.001)


# -- migrations ---------------------------------------------------------------------------


async def test_migrations_applied_once_and_idempotent_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "relay.db"
    first = await Database.open(path)
    rows = await first.fetchall("SELECT number, name, applied_at_ms FROM schema_migrations")
    await first.close()
    assert [r["number"] for r in rows] == KNOWN

    second = await Database.open(path)
    try:
        again = await second.fetchall("SELECT number, name, applied_at_ms FROM schema_migrations")
        tables = {
            r["name"]
            for r in await second.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
    finally:
        await second.close()
    assert [tuple(r) for r in again] == [tuple(r) for r in rows]
    assert {"accounts", "api_keys", "ledger", "usage", "audit", "meta"} <= tables


def test_apply_migrations_returns_only_new_numbers(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "plain.db", isolation_level=None)
    try:
        assert apply_migrations(conn, now_ms=NOW_MS) == KNOWN
        assert apply_migrations(conn, now_ms=NOW_MS) == []
        extended = [*MIGRATIONS, Migration(NEXT, "extra", "CREATE TABLE extra (x INTEGER);")]
        assert apply_migrations(conn, extended, now_ms=NOW_MS) == [NEXT]
        applied = conn.execute("SELECT number, applied_at_ms FROM schema_migrations").fetchall()
        assert applied == [(n, NOW_MS) for n in [*KNOWN, NEXT]]
    finally:
        conn.close()


async def test_database_newer_than_code_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    future = [*MIGRATIONS, Migration(NEXT, "from the future", "CREATE TABLE later (x INTEGER);")]
    await (await Database.open(path, migrations=future)).close()
    with pytest.raises(MigrationError, match=f"migration {NEXT}"):
        await Database.open(path)


async def test_failed_migration_rolls_back_completely(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    broken = [*MIGRATIONS, Migration(NEXT, "broken", "CREATE TABLE half (x INTEGER); NOT SQL;")]
    with pytest.raises(MigrationError, match=rf"migration {NEXT} \(broken\) failed"):
        await Database.open(path, migrations=broken)
    conn = sqlite3.connect(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        numbers = [r[0] for r in conn.execute("SELECT number FROM schema_migrations")]
    finally:
        conn.close()
    assert "half" not in tables
    assert numbers == KNOWN


def test_misnumbered_migrations_are_rejected(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "plain.db", isolation_level=None)
    try:
        with pytest.raises(MigrationError, match="numbered"):
            apply_migrations(conn, [Migration(NEXT + 1, "skips one", "SELECT 1;")])
    finally:
        conn.close()


def test_split_statements_keeps_trigger_bodies_whole() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE t (x TEXT DEFAULT 'a;b');
    CREATE TRIGGER t_no_delete BEFORE DELETE ON t
    BEGIN
        SELECT RAISE(ABORT, 'nope');
    END;
    """
    statements = split_statements(script)
    assert len(statements) == 2
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")


# -- durable writes and reads ---------------------------------------------------------------


async def test_write_returns_committed_result_visible_to_reader(db: Database) -> None:
    def insert_and_report(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO meta (key, value) VALUES ('k', 'v1')")
        return "done"

    assert await db.write(insert_and_report) == "done"
    row = await db.fetchone("SELECT value FROM meta WHERE key = ?", ("k",))
    assert row is not None and row["value"] == "v1"
    assert await db.fetchone("SELECT value FROM meta WHERE key = 'missing'") is None


async def test_execute_write_returns_rowid_or_zero_when_nothing_inserted(db: Database) -> None:
    await add_account(db)
    first = await db.execute_write(*ledger_insert("credit", "topup-1"))
    second = await db.execute_write(*ledger_insert("credit", "topup-2"))
    assert (first, second) == (1, 2)
    ignored = await db.execute_write(
        "INSERT INTO meta (key, value) VALUES (:k, 'v') ON CONFLICT DO NOTHING", {"k": "a"}
    )
    repeated = await db.execute_write(
        "INSERT INTO meta (key, value) VALUES (:k, 'v') ON CONFLICT DO NOTHING", {"k": "a"}
    )
    assert ignored > 0 and repeated == 0


async def test_durable_write_does_not_wait_for_the_flush_interval(tmp_path: Path) -> None:
    # An hour's flush interval: had the durable write waited for it, wait_for would time out.
    slow = await Database.open(tmp_path / "relay.db", flush_interval_s=3600.0)
    try:
        slow.enqueue(put_meta("queued-before"))
        await asyncio.wait_for(slow.write(put_meta("durable")), timeout=60)
        assert await count(slow, "meta") == 2  # the earlier queued write rode along
    finally:
        await slow.close()


async def test_reader_connections_are_read_only(db: Database) -> None:
    with pytest.raises(sqlite3.OperationalError):
        await db.fetchall("INSERT INTO meta (key, value) VALUES ('x', 'y')")
    mode = await db.fetchone("PRAGMA journal_mode")
    assert mode is not None and mode[0] == "wal"


async def test_foreign_keys_are_enforced(db: Database) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        await db.execute_write(*ledger_insert("credit", "r", account_id="nobody"))


async def test_reads_proceed_while_a_write_transaction_is_open(db: Database) -> None:
    await db.write(put_meta("before"))
    gate = WriterGate()
    held = asyncio.create_task(db.write(gate))
    try:
        await gate.wait_entered()
        # WAL: the reader sees the last committed state instead of blocking on the writer.
        assert await asyncio.wait_for(count(db, "meta"), timeout=2) == 1
    finally:
        gate.release.set()
    await held
    assert await count(db, "meta") == 2


# -- group commit and savepoints -----------------------------------------------------------


async def test_enqueued_writes_are_group_committed(db: Database) -> None:
    commits_before = db.commits
    for i in range(1_000):
        db.enqueue(put_meta(f"k{i}"))
    assert db.pending_writes == 1_000
    await db.flush()
    assert db.pending_writes == 0
    assert db.commits - commits_before == 1
    assert await count(db, "meta") == 1_000


async def test_enqueued_write_commits_within_the_flush_interval(db: Database) -> None:
    db.enqueue(put_meta("soon"))
    deadline = time.monotonic() + 2
    while await count(db, "meta") == 0:
        assert time.monotonic() < deadline, "queued write never committed"
        await asyncio.sleep(0.01)
    assert db.commits == 1  # migrations are not counted: only the one queued batch


async def test_ten_thousand_enqueued_inserts_are_group_committed(db: Database) -> None:
    # Speed is scripts/bench's to measure; what makes it fast is few commits for many rows.
    commits_before = db.commits
    for i in range(10_000):
        db.enqueue(put_meta(f"k{i}"))
    await db.flush()
    assert await count(db, "meta") == 10_000
    assert db.commits - commits_before <= 10


async def test_failing_item_rolls_back_only_itself(db: Database) -> None:
    await db.write(put_meta("taken"))
    commits_before = db.commits
    db.enqueue(put_meta("a"))
    duplicate = asyncio.create_task(db.write(put_meta("taken", "second")))
    await asyncio.sleep(0)  # let the durable write join the same batch
    db.enqueue(put_meta("c"))
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        await duplicate
    await db.flush()
    rows = await db.fetchall("SELECT key, value FROM meta ORDER BY key")
    assert [tuple(r) for r in rows] == [("a", "v"), ("c", "v"), ("taken", "v")]
    assert db.commits - commits_before == 1


async def test_fire_and_forget_failure_is_logged_without_parameters(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    await db.write(put_meta("dup"))
    caplog.set_level(logging.ERROR, logger="relay.storage.db")
    # The batch first runs without savepoints, fails, rolls back and is replayed with them:
    # the items before and after the failing one still commit, each exactly once.
    db.enqueue(put_meta("before"))
    db.enqueue(put_meta("dup", "secret-parameter-value"))
    db.enqueue(put_meta("fine"))
    await db.flush()
    assert await count(db, "meta") == 3
    messages = [r.getMessage() for r in caplog.records if r.name == "relay.storage.db"]
    assert len(messages) == 1
    assert "IntegrityError" in messages[0] and "UNIQUE" in messages[0]
    assert "secret-parameter-value" not in caplog.text


class Tally(PerBatch):
    """A test share: the batch's shares become one meta row, ``tally:<first key>``."""

    __slots__ = ("key",)
    batches: list[list[str]] = []  # the keys of each call, in order

    def __init__(self, key: str) -> None:
        self.key = key

    @classmethod
    def apply_batch(cls, conn: sqlite3.Connection, shares: Sequence[Tally]) -> None:
        keys = [share.key for share in shares]
        cls.batches.append(keys)
        # A duplicate key fails here, like an item's own write would.
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (f"tally:{keys[0]}", "t"))


def put_with_tally(key: str) -> Callable[[sqlite3.Connection], Tally]:
    def insert(conn: sqlite3.Connection) -> Tally:
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, "v"))
        return Tally(key)

    return insert


async def test_per_batch_shares_are_applied_once_per_batch_in_its_commit(db: Database) -> None:
    Tally.batches = []
    commits_before = db.commits
    for key in ("a", "b", "c"):
        db.enqueue(put_with_tally(key))
    await db.flush()
    assert Tally.batches == [["a", "b", "c"]]
    assert db.commits - commits_before == 1
    rows = await db.fetchall("SELECT key FROM meta ORDER BY key")
    assert [row["key"] for row in rows] == ["a", "b", "c", "tally:a"]


async def test_a_failing_share_rolls_back_only_its_own_item(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    await db.write(put_meta("tally:dup"))
    Tally.batches = []
    caplog.set_level(logging.ERROR, logger="relay.storage.db")
    # Together the shares fail (tally:before is fine, but the batch has to replay to find
    # out which item's share is the bad one): replayed with savepoints, each item applies
    # its own share inside its savepoint, so only "dup" is rolled back, row and share.
    db.enqueue(put_with_tally("dup"))
    db.enqueue(put_with_tally("before"))
    db.enqueue(put_with_tally("fine"))
    await db.flush()
    assert Tally.batches == [["dup", "before", "fine"], ["dup"], ["before"], ["fine"]]
    rows = await db.fetchall("SELECT key FROM meta ORDER BY key")
    assert [row["key"] for row in rows] == [
        "before",
        "fine",
        "tally:before",
        "tally:dup",
        "tally:fine",
    ]
    messages = [r.getMessage() for r in caplog.records if r.name == "relay.storage.db"]
    assert len(messages) == 1 and "UNIQUE" in messages[0]


async def test_bools_and_none_are_bound_as_before_through_registered_adapters(
    db: Database,
) -> None:
    # Database.open registers them (relay.storage.batch.bind_bools_and_none_directly).
    assert sqlite3.adapters[(bool, sqlite3.PrepareProtocol)] is int
    assert (type(None), sqlite3.PrepareProtocol) in sqlite3.adapters

    def write(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
        conn.execute("CREATE TABLE flags (a, b, c)")
        conn.execute("INSERT INTO flags VALUES (?, ?, ?)", (True, False, None))
        return conn.execute("SELECT a, b, c, typeof(a), typeof(c) FROM flags").fetchall()

    assert [tuple(row) for row in await db.write(write)] == [(1, 0, None, "integer", "null")]
    row = await db.fetchone("SELECT count(*) FROM flags WHERE a = ? AND c IS ?", (True, None))
    assert row is not None and row[0] == 1


# -- schema rules ---------------------------------------------------------------------------


async def test_ledger_is_append_only(db: Database) -> None:
    await add_account(db)
    await db.execute_write(*ledger_insert("credit", "topup-1"))
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        await db.execute_write("UPDATE ledger SET amount_micros = 0")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        await db.execute_write("DELETE FROM ledger")
    row = await db.fetchone("SELECT amount_micros FROM ledger")
    assert row is not None and row["amount_micros"] == 1_000_000


async def test_one_charge_per_reference_and_idempotent_top_ups(db: Database) -> None:
    await add_account(db, "acc_1")
    await add_account(db, "acc_2")
    await db.execute_write(*ledger_insert("charge", "req-1"))
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        await db.execute_write(*ledger_insert("charge", "req-1", account_id="acc_2"))
    await db.execute_write(*ledger_insert("credit", "stripe-1"))
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        await db.execute_write(*ledger_insert("credit", "stripe-1"))
    # The same top-up reference on another account, and repeated adjustments, are fine.
    await db.execute_write(*ledger_insert("credit", "stripe-1", account_id="acc_2"))
    await db.execute_write(*ledger_insert("adjustment", "manual"))
    await db.execute_write(*ledger_insert("adjustment", "manual"))
    assert await count(db, "ledger") == 5


async def test_schema_checks_reject_bad_values(db: Database) -> None:
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        await db.execute_write(
            "INSERT INTO accounts (id, name, mode, created_at_ms, updated_at_ms)"
            " VALUES ('a', 'a', 'free', 0, 0)"
        )


# -- back-pressure and shutdown -------------------------------------------------------------


async def test_full_queue_applies_back_pressure_and_never_drops(tmp_path: Path) -> None:
    small = await Database.open(tmp_path / "relay.db", max_queue=3)
    gate = WriterGate()
    try:
        held = asyncio.create_task(small.write(gate))
        await gate.wait_entered()  # the writer is busy: nothing leaves the queue
        for i in range(3):
            small.enqueue(put_meta(f"k{i}"))
        with pytest.raises(WriteQueueFull):
            small.enqueue(put_meta("overflow"))
        waiting = asyncio.create_task(small.enqueue_wait(put_meta("patient")))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        assert small.pending_writes == 3
    finally:
        gate.release.set()
    await held
    await asyncio.wait_for(waiting, timeout=2)
    await small.flush()
    keys = {r["key"] for r in await small.fetchall("SELECT key FROM meta")}
    await small.close()
    assert keys == {"gate", "k0", "k1", "k2", "patient"}
    assert isinstance(WriteQueueFull("x"), RuntimeError)


async def test_close_drains_every_queued_write(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    first = await Database.open(path, flush_interval_s=10.0)
    for i in range(5_000):
        first.enqueue(put_meta(f"k{i}"))
    await first.close()
    second = await Database.open(path)
    try:
        assert await count(second, "meta") == 5_000
    finally:
        await second.close()


async def test_close_is_idempotent_and_refuses_later_work(tmp_path: Path) -> None:
    database = await Database.open(tmp_path / "relay.db")
    await asyncio.gather(database.close(), database.close())
    await database.close()
    with pytest.raises(DatabaseClosed):
        database.enqueue(put_meta("late"))
    with pytest.raises(DatabaseClosed):
        await database.write(put_meta("late"))
    with pytest.raises(DatabaseClosed):
        await database.fetchall("SELECT 1")
    await database.flush()  # nothing pending: returns at once


async def test_open_and_close_leave_no_resource_warnings(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        database = await Database.open(tmp_path / "relay.db", read_connections=3)
        database.enqueue(put_meta("x"))
        await database.close()
        del database
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


def _nice_of(thread_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, thread_id)


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
async def test_writer_nice_lowers_only_the_writer_threads_priority(tmp_path: Path) -> None:
    main_nice = _nice_of(threading.get_native_id())
    db = await Database.open(tmp_path / "nice.db", writer_nice=5)
    try:
        # A write function runs in the writer thread: it tells its own thread id.
        writer_id = await db.write(lambda conn: threading.get_native_id())
        assert writer_id != threading.get_native_id()
        assert _nice_of(writer_id) == min(19, main_nice + 5)
        assert _nice_of(threading.get_native_id()) == main_nice
        # The writer still group-commits with its lowered priority.
        await db.execute_write("CREATE TABLE t (x INTEGER)")
        db.enqueue(lambda conn: conn.execute("INSERT INTO t VALUES (1)"))
        await db.flush()
        assert [tuple(row) for row in await db.fetchall("SELECT x FROM t")] == [(1,)]
    finally:
        await db.close()


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
async def test_writer_nice_zero_keeps_the_writer_at_the_processs_priority(tmp_path: Path) -> None:
    main_nice = _nice_of(threading.get_native_id())
    db = await Database.open(tmp_path / "plain.db", writer_nice=0)
    try:
        assert _nice_of(await db.write(lambda conn: threading.get_native_id())) == main_nice
    finally:
        await db.close()


async def test_writer_priority_refused_still_opens_and_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)
    with caplog.at_level(logging.WARNING, logger="relay.storage.db"):
        db = await Database.open(tmp_path / "refused.db", writer_nice=5)
    try:
        await db.execute_write("CREATE TABLE t (x INTEGER)")
        db.enqueue(lambda conn: conn.execute("INSERT INTO t VALUES (2)"))
        await db.flush()
        assert [tuple(row) for row in await db.fetchall("SELECT x FROM t")] == [(2,)]
    finally:
        await db.close()
    if sys.platform == "linux":
        assert "could not lower the writer thread's priority" in caplog.text
