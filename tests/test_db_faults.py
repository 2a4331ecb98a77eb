"""Storage faults in relay.storage.db: a batch the engine cannot commit is retried whole
until it commits (never rolled back to a savepoint after the engine rolled back), durable
writes that cannot commit fail with nothing applied, and close() always finishes.

The faults are real SQLite errors: ``SQLITE_FULL`` from ``PRAGMA max_page_count`` on the
writer's own connection, ``SQLITE_BUSY`` from a second connection holding the write lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.errors import StorageUnavailable
from relay.storage.batch import StorageFault, is_storage_fault, run_batch
from relay.storage.db import Database


class Disk:
    """A switch for a simulated full disk: while ``full``, every write first caps the
    database at its current size, so a growing insert fails with a real SQLITE_FULL."""

    def __init__(self) -> None:
        self.full = False

    def put(self, key: str, size: int = 20_000) -> Callable[[sqlite3.Connection], None]:
        def insert(conn: sqlite3.Connection) -> None:
            if self.full:
                pages = conn.execute("PRAGMA page_count").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count={pages}")
            else:
                conn.execute("PRAGMA max_page_count=1073741823")
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, "x" * size))

        return insert


async def keys(db: Database) -> set[str]:
    return {row["key"] for row in await db.fetchall("SELECT key FROM meta")}


def test_sqlite_full_is_a_storage_fault_and_rolls_the_batch_back(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.execute("CREATE TABLE t (v TEXT)")
    disk = Disk()
    disk.full = True

    def insert(c: sqlite3.Connection) -> None:
        pages = c.execute("PRAGMA page_count").fetchone()[0]
        c.execute(f"PRAGMA max_page_count={pages}")
        c.execute("INSERT INTO t VALUES (?)", ("y" * 50_000,))

    def ok(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO t VALUES ('small')")

    for replayable in (True, False):
        with pytest.raises(StorageFault) as caught:
            run_batch(conn, [ok, insert, ok], replayable=replayable)
        assert "SQLITE_FULL" in caught.value.reason
        assert is_storage_fault(caught.value.cause)  # type: ignore[arg-type]
        assert not conn.in_transaction
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0  # nothing of it
    conn.close()


async def test_batch_hitting_a_full_disk_is_retried_until_it_commits(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "relay.db", flush_interval_s=0.01)
    disk = Disk()
    try:
        disk.full = True
        for i in range(50):
            db.enqueue(disk.put(f"k{i}"))
        await asyncio.sleep(0.4)
        assert db.faults >= 2 and db.last_fault is not None and "SQLITE_FULL" in db.last_fault
        assert db.stalled_for() > 0.3
        assert await keys(db) == set()
        db.enqueue(disk.put("late"))  # joins the retried batch
        disk.full = False  # "space returns"
        await db.flush()
        assert await keys(db) == {f"k{i}" for i in range(50)} | {"late"}
        assert db.last_fault is None and db.stalled_for() == 0.0
    finally:
        await db.close()


async def test_item_error_in_a_faulting_batch_still_fails_only_itself(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "relay.db", flush_interval_s=0.01)
    disk = Disk()
    try:
        await db.write(disk.put("dup", 10))
        disk.full = True
        db.enqueue(disk.put("a"))
        duplicate = asyncio.ensure_future(db.write(disk.put("dup", 10)))
        await asyncio.sleep(0.2)
        assert db.faults >= 1 and not duplicate.done()
        disk.full = False
        with pytest.raises(sqlite3.IntegrityError):
            await duplicate
        await db.flush()
        assert await keys(db) == {"dup", "a"}
    finally:
        await db.close()


def _hold_write_lock(path: Path, seconds: float, locked: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    conn.execute("BEGIN IMMEDIATE")
    locked.set()
    threading.Event().wait(seconds)
    conn.execute("ROLLBACK")
    conn.close()


async def test_outside_write_lock_past_busy_timeout_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    db = await Database.open(path, flush_interval_s=0.01, busy_timeout_ms=50)
    disk = Disk()
    try:
        locked = threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(path, 1.0, locked))
        holder.start()
        await asyncio.to_thread(locked.wait)
        for i in range(200):
            db.enqueue(disk.put(f"k{i}", 10))
        await asyncio.sleep(0.5)
        assert db.faults >= 2 and "SQLITE_BUSY" in (db.last_fault or "")
        await asyncio.to_thread(holder.join)
        await db.flush()
        assert len(await keys(db)) == 200
    finally:
        await db.close()


async def test_durable_write_that_cannot_commit_fails_with_nothing_applied(
    tmp_path: Path,
) -> None:
    db = await Database.open(tmp_path / "relay.db", flush_interval_s=0.01, durable_wait_s=0.3)
    disk = Disk()
    try:
        disk.full = True
        db.enqueue(disk.put("queued"))
        with pytest.raises(StorageUnavailable):
            await db.write(disk.put("top-up"))
        disk.full = False
        await db.flush()
        # The fire-and-forget write was kept and committed; the failed durable one never was.
        assert await keys(db) == {"queued"}
    finally:
        await db.close()


async def test_close_on_a_broken_disk_finishes_and_reports_the_loss(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "relay.db", flush_interval_s=0.01, close_retry_s=0.3)
    disk = Disk()
    disk.full = True
    for i in range(5):
        db.enqueue(disk.put(f"k{i}"))
    await asyncio.sleep(0.1)
    with pytest.raises(StorageFault, match="5 writes"):
        await asyncio.wait_for(db.close(), 5)
    assert db.lost_on_close == 5
    # Every connection is closed: no reader thread is left to keep the process alive.
    assert not [t for t in threading.enumerate() if t.name.startswith("relay-db")]


async def test_durable_batches_commit_with_synchronous_full(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "relay.db", flush_interval_s=0.01)
    try:
        during = await db.write(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
        assert during == 2  # FULL while a durable batch commits
        seen: list[int] = []
        await db.enqueue_wait(lambda c: seen.append(c.execute("PRAGMA synchronous").fetchone()[0]))
        await db.flush()
        assert seen == [1]  # NORMAL for fire-and-forget batches
    finally:
        await db.close()
