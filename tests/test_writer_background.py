"""Routine flushes on a background thread at the lowest priority; the writer's own thread
when a commit must not wait for an idle core (relay.storage.writer ``_executor_for``).

On a core the writer shares with the event loop, a flush at nice 19 runs only while the
loop has nothing to do, so it no longer lands inside a request (the c=1 p99). But such a
thread can starve on a saturated core, and an unprivileged thread cannot raise its own
priority again: so a batch that has waited past its window, a batch someone awaits, and
the flushes of a closing database go to the writer's own thread instead.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.storage.db import Database

FLUSH_S = 0.02


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(
        tmp_path / "relay.db", flush_interval_s=FLUSH_S, writer_nice=5, background_nice=19
    )
    try:
        yield database
    finally:
        await database.close()


class Threads:
    """Which thread ran each recorded write: (name, native id)."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, int]] = {}

    def write(self, label: str, gate: threading.Event | None = None):  # type: ignore[no-untyped-def]
        def fn(conn: sqlite3.Connection) -> str:
            self.seen[label] = (threading.current_thread().name, threading.get_native_id())
            if gate is not None:
                assert gate.wait(5), "the test never opened the gate"
            return label

        return fn


async def test_a_routine_flush_runs_on_the_background_thread(db: Database) -> None:
    threads = Threads()
    db.enqueue(threads.write("routine"))
    await db.flush()
    name, native_id = threads.seen["routine"]
    assert name.startswith("relay-db-background")
    if sys.platform == "linux":
        assert os.getpriority(os.PRIO_PROCESS, native_id) == 19


async def test_a_write_someone_awaits_runs_on_the_writers_own_thread(db: Database) -> None:
    threads = Threads()
    assert await db.write(threads.write("awaited")) == "awaited"
    name, native_id = threads.seen["awaited"]
    assert name.startswith("relay-db-writer")
    if sys.platform == "linux":
        assert os.getpriority(os.PRIO_PROCESS, native_id) == 5


async def test_a_batch_that_waited_past_its_window_catches_up_on_the_writers_thread(
    db: Database,
) -> None:
    """The background thread held up (as a starved one would be): what queued meanwhile
    has waited well past its window when its turn comes, so the writer's thread takes it."""
    threads = Threads()
    gate = threading.Event()
    db.enqueue(threads.write("held", gate))
    while "held" not in threads.seen:
        await asyncio.sleep(0.005)
    db.enqueue(threads.write("late"))
    await asyncio.sleep(FLUSH_S + 0.15)  # past the window and the catch-up margin
    gate.set()
    await db.flush()
    assert threads.seen["held"][0].startswith("relay-db-background")
    assert threads.seen["late"][0].startswith("relay-db-writer")
    # Caught up, the next routine flush is the background thread's again.
    db.enqueue(threads.write("after"))
    await db.flush()
    assert threads.seen["after"][0].startswith("relay-db-background")


async def test_a_large_batch_runs_on_the_writers_own_thread(db: Database) -> None:
    """However fast it filled: a starved background thread holds at most a small batch."""
    threads = Threads()
    for n in range(300):
        db.enqueue(threads.write(f"write {n}"))
    await db.flush()
    assert {threads.seen[f"write {n}"][0][:15] for n in range(300)} == {"relay-db-writer"}
    db.enqueue(threads.write("small"))
    await db.flush()
    assert threads.seen["small"][0].startswith("relay-db-background")


async def test_without_a_lower_background_priority_every_flush_is_the_writers(
    tmp_path: Path,
) -> None:
    for background_nice in (None, 5, 3):
        database = await Database.open(
            tmp_path / f"relay-{background_nice}.db",
            flush_interval_s=FLUSH_S,
            writer_nice=5,
            background_nice=background_nice,
        )
        try:
            threads = Threads()
            database.enqueue(threads.write("routine"))
            await database.flush()
            assert threads.seen["routine"][0].startswith("relay-db-writer")
        finally:
            await database.close()


async def test_closing_commits_what_is_queued_and_stops_both_threads(tmp_path: Path) -> None:
    database = await Database.open(
        tmp_path / "relay.db", flush_interval_s=1.0, writer_nice=5, background_nice=19
    )
    await database.execute_write("CREATE TABLE t (n INTEGER)")
    database.enqueue(lambda conn: conn.execute("INSERT INTO t VALUES (-1)"))
    await database.flush()  # the background thread starts with its first flush
    for n in range(50):
        database.enqueue(lambda conn, n=n: conn.execute("INSERT INTO t VALUES (?)", (n,)))
    before = {thread.name for thread in threading.enumerate()}
    assert any(name.startswith("relay-db-background") for name in before)
    await database.close()
    after = {thread.name for thread in threading.enumerate()}
    assert not any(name.startswith(("relay-db-background", "relay-db-writer")) for name in after)
    with sqlite3.connect(tmp_path / "relay.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM t").fetchone() == (51,)
