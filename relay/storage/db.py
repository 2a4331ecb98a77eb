"""relay's storage layer: one SQLite file, ONE writer, a few read-only readers.

The process is the only writer of the database, so every write goes through one queue owned
by one writer connection (the idea of Datasette's ``database.py``):

* ``enqueue(fn)`` / ``await enqueue_wait(fn)`` queue a fire-and-forget write (settlements, usage
  rows). The writer group-commits everything queued within ``flush_interval_s`` as ONE
  ``BEGIN IMMEDIATE`` transaction.
* ``await write(fn)`` / ``await execute_write(sql, params)`` queue a durable write (top-ups,
  account and key changes, admin actions) and return once its transaction is COMMITTED. A
  durable write does not wait out the flush interval: it asks the writer to commit now.
* Each item runs inside its own ``SAVEPOINT``: a failing item (say a UNIQUE violation) rolls
  back only itself. Its awaiting caller gets the exception; a fire-and-forget failure is
  logged on ``relay.storage.db`` with exception type and message only, never the parameters.
* Nothing is ever dropped silently. A full queue makes ``enqueue`` raise ``WriteQueueFull``
  and makes ``enqueue_wait``/``write`` wait for space. ``close()`` stops accepting, drains
  and commits every queued write, then closes all connections.
* Reads go to a small pool of ``?mode=ro`` aiosqlite connections with ``query_only=ON``;
  WAL mode lets them read the last committed state while the writer is in a transaction.

Why the writer is not an aiosqlite connection: aiosqlite's public API makes one thread hop
per statement (a batch of 10,000 items with their savepoints would be 30,000 hops), and the
only way to run a whole function in its thread is the private ``Connection._execute``. So the
writer is a plain ``sqlite3`` connection created and used only inside a dedicated
single-thread executor: one thread, one connection, and one hop per batch (``run_batch``
runs the whole transaction). Readers stay on aiosqlite.

Write functions receive the raw ``sqlite3.Connection`` (``row_factory=sqlite3.Row``) inside
the batch transaction; they must not commit, roll back or open transactions themselves.
``synchronous=NORMAL`` in WAL mode means a commit survives a process crash (SIGKILL), though
not necessarily a power loss. All methods must be called from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from relay.storage.batch import (
    CONNECTION_PRAGMAS,
    Outcome,
    WriteFn,
    open_writer_connection,
    run_batch,
)
from relay.storage.files import create_private_file, make_private_dir, secure_existing
from relay.storage.migrations import MIGRATIONS, Migration, apply_migrations

__all__ = ["Database", "DatabaseClosed", "WriteQueueFull"]

T = TypeVar("T")

logger = logging.getLogger(__name__)


class WriteQueueFull(RuntimeError):
    """``enqueue`` found the write queue at ``max_queue``; use ``await enqueue_wait`` instead."""


class DatabaseClosed(RuntimeError):
    """The database is closing or closed and accepts no more work."""


@dataclass(slots=True)
class _QueuedWrite:
    fn: WriteFn
    future: asyncio.Future[Any] | None  # None for fire-and-forget writes


async def _open_reader(path: Path) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        conn.row_factory = sqlite3.Row
        for pragma in (*CONNECTION_PRAGMAS, "PRAGMA query_only=ON"):
            async with conn.execute(pragma):
                pass
    except BaseException:
        await conn.close()
        raise
    return conn


class Database:
    """The single-writer SQLite store. Create with ``await Database.open(path)``."""

    def __init__(
        self,
        path: Path,
        writer_conn: sqlite3.Connection,
        executor: ThreadPoolExecutor,
        readers: list[aiosqlite.Connection],
        *,
        flush_interval_s: float,
        max_queue: int,
    ) -> None:
        self.path = path
        self.commits = 0  # committed write transactions (batches), for tests and metrics
        self._writer_conn = writer_conn
        self._executor = executor
        self._reader_conns = readers
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        for reader in readers:
            self._readers.put_nowait(reader)
        self._flush_interval_s = flush_interval_s
        self._max_queue = max_queue
        self._queue: deque[_QueuedWrite] = deque()
        self._oldest_queued_at = 0.0
        # Sequence numbers of queued items: enqueued >= taken (by the writer) >= processed.
        self._enqueued_seq = 0
        self._taken_seq = 0
        self._processed_seq = 0
        self._urgent_seq = 0  # items up to here have someone waiting: commit without delay
        self._wake = asyncio.Event()  # the queue became non-empty, or closing
        self._hurry = asyncio.Event()  # someone wants the current window cut short
        self._space = asyncio.Event()  # the writer took a batch: the queue has room again
        self._batch_done = asyncio.Event()  # pulsed (set, then replaced) after each batch
        self._closing = False
        self._closed = asyncio.Event()
        self._writer_task = asyncio.create_task(self._run_writer(), name="relay-db-writer")

    @classmethod
    async def open(
        cls,
        path: Path | str,
        *,
        flush_interval_s: float = 0.05,
        read_connections: int = 2,
        max_queue: int = 10_000,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> Database:
        """Create or open the database file, apply migrations, start the writer."""
        if flush_interval_s < 0 or read_connections < 1 or max_queue < 1:
            raise ValueError("need flush_interval_s >= 0, read_connections >= 1, max_queue >= 1")
        path = Path(path)
        make_private_dir(path.parent)
        # SQLite gives -wal and -shm the database file's mode: create it 0600 first.
        create_private_file(path)
        secure_existing(*(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")))
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-db-writer")
        writer: sqlite3.Connection | None = None
        readers: list[aiosqlite.Connection] = []
        try:
            writer = await loop.run_in_executor(executor, open_writer_connection, path)
            await loop.run_in_executor(executor, apply_migrations, writer, migrations)
            # Readers open read-only, so only after the writer has created the file and schema.
            for _ in range(read_connections):
                readers.append(await _open_reader(path))
        except BaseException:
            for reader in readers:
                await reader.close()
            if writer is not None:
                await loop.run_in_executor(executor, writer.close)
            executor.shutdown(wait=True)
            raise
        return cls(
            path,
            writer,
            executor,
            readers,
            flush_interval_s=flush_interval_s,
            max_queue=max_queue,
        )

    @property
    def pending_writes(self) -> int:
        """Writes queued and not yet taken by the writer (excludes the batch in flight)."""
        return len(self._queue)

    # -- writes ---------------------------------------------------------------------------

    def enqueue(self, fn: Callable[[sqlite3.Connection], None]) -> None:
        """Queue a fire-and-forget write, committed within ``flush_interval_s``.

        Raises ``WriteQueueFull`` when ``max_queue`` writes are waiting (never drops the
        write); callers that can wait should use ``enqueue_wait``.
        """
        self._ensure_accepting()
        if len(self._queue) >= self._max_queue:
            self._hurry.set()
            raise WriteQueueFull(f"write queue is full ({self._max_queue} pending writes)")
        self._append(_QueuedWrite(fn, None))

    async def enqueue_wait(self, fn: Callable[[sqlite3.Connection], None]) -> None:
        """Like ``enqueue``, but waits for room when the queue is full (back-pressure)."""
        await self._wait_for_space()
        self._append(_QueuedWrite(fn, None))

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in the writer and return its result once committed.

        If ``fn`` raises, its savepoint is rolled back and the exception is raised here.
        Cancelling the caller does not withdraw a write already queued.
        """
        await self._wait_for_space()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._append(_QueuedWrite(fn, future))
        self._request_prompt_commit(self._enqueued_seq)
        return await future

    async def execute_write(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> int:
        """Execute one INSERT durably; return the inserted row's rowid (``cursor.lastrowid``).

        Returns 0 when the statement changed no row (e.g. ``INSERT ... DO NOTHING`` on a
        conflict), instead of SQLite's stale connection-wide last rowid. For UPDATE or
        DELETE the returned number is not meaningful: use ``write`` and read
        ``cursor.rowcount`` there.
        """

        def execute(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(sql, params)
            if cursor.rowcount == 0 or cursor.lastrowid is None:
                return 0
            return int(cursor.lastrowid)

        return await self.write(execute)

    async def flush(self) -> None:
        """Wait until every write queued so far is committed (or has failed and been reported)."""
        target = self._enqueued_seq
        if self._processed_seq >= target:
            return
        self._request_prompt_commit(target)
        while self._processed_seq < target:
            if self._writer_task.done():
                raise DatabaseClosed("the database writer stopped before flushing")
            await self._batch_done.wait()

    # -- reads ----------------------------------------------------------------------------

    async def fetchall(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[sqlite3.Row]:
        """Run a read-only query on a reader connection; return all rows."""
        async with self._reader() as conn:
            rows = await conn.execute_fetchall(sql, params)
        return list(rows)

    async def fetchone(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> sqlite3.Row | None:
        """Run a read-only query on a reader connection; return its first row or None."""
        async with self._reader() as conn, conn.execute(sql, params) as cursor:
            return await cursor.fetchone()

    @contextlib.asynccontextmanager
    async def _reader(self) -> AsyncIterator[aiosqlite.Connection]:
        if self._closing:
            raise DatabaseClosed("database is closed")
        conn = await self._readers.get()
        try:
            yield conn
        finally:
            self._readers.put_nowait(conn)

    # -- shutdown -------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop accepting writes, commit every queued write, close all connections.

        Idempotent; concurrent callers all return once the database is closed.
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._wake.set()
        self._hurry.set()
        self._space.set()  # writers waiting for room learn that we are closing
        try:
            # Shielded: cancelling close() must not cancel the drain half-way.
            await asyncio.shield(self._writer_task)
        finally:
            await self._close_connections()
            self._closed.set()

    async def _close_connections(self) -> None:
        # Taking every reader back waits for reads in flight to finish.
        for _ in self._reader_conns:
            await self._readers.get()
        for reader in self._reader_conns:
            await reader.close()
        # The writer closes last so that SQLite checkpoints the WAL into the main file.
        await asyncio.get_running_loop().run_in_executor(self._executor, self._writer_conn.close)
        self._executor.shutdown(wait=True)

    # -- the writer -----------------------------------------------------------------------

    def _ensure_accepting(self) -> None:
        if self._closing:
            raise DatabaseClosed("database is closing; no more writes are accepted")

    def _append(self, item: _QueuedWrite) -> None:
        if not self._queue:
            self._oldest_queued_at = asyncio.get_running_loop().time()
        self._queue.append(item)
        self._enqueued_seq += 1
        self._wake.set()

    def _request_prompt_commit(self, seq: int) -> None:
        self._urgent_seq = max(self._urgent_seq, seq)
        self._hurry.set()

    async def _wait_for_space(self) -> None:
        self._ensure_accepting()
        while len(self._queue) >= self._max_queue:
            self._hurry.set()  # a full queue is committed now, not at the end of the window
            self._space.clear()
            await self._space.wait()
            self._ensure_accepting()

    async def _run_writer(self) -> None:
        try:
            while await self._wait_for_work():
                await self._wait_for_batch_window()
                batch = self._take_batch()
                await self._commit_batch(batch)
                self._processed_seq += len(batch)
                self._signal_batch_done()
        finally:
            self._signal_batch_done()  # never leave flush() waiting on a stopped writer

    async def _wait_for_work(self) -> bool:
        while not self._queue:
            if self._closing:
                return False
            self._wake.clear()
            await self._wake.wait()
        return True

    def _should_commit_now(self) -> bool:
        return (
            self._closing
            or self._urgent_seq > self._taken_seq
            or len(self._queue) >= self._max_queue
        )

    async def _wait_for_batch_window(self) -> None:
        deadline = self._oldest_queued_at + self._flush_interval_s
        loop = asyncio.get_running_loop()
        while not self._should_commit_now():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._hurry.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._hurry.wait()
            except TimeoutError:
                return

    def _take_batch(self) -> list[_QueuedWrite]:
        batch = list(self._queue)
        self._queue.clear()
        self._taken_seq += len(batch)
        self._space.set()
        return batch

    async def _commit_batch(self, batch: list[_QueuedWrite]) -> None:
        fns = [item.fn for item in batch]
        # Durable writes (admin actions, top-ups) may do more than SQL: never replay them.
        replayable = all(item.future is None for item in batch)
        run = functools.partial(run_batch, self._writer_conn, fns, replayable=replayable)
        loop = asyncio.get_running_loop()
        try:
            outcomes = await loop.run_in_executor(self._executor, run)
        except Exception as exc:  # the whole transaction rolled back: every item must learn it
            self._fail_batch(batch, exc)
            return
        self.commits += 1
        for item, outcome in zip(batch, outcomes, strict=True):
            _settle(item, outcome)

    def _signal_batch_done(self) -> None:
        self._batch_done.set()
        self._batch_done = asyncio.Event()

    @staticmethod
    def _fail_batch(batch: list[_QueuedWrite], exc: Exception) -> None:
        lost = 0
        for item in batch:
            if item.future is None:
                lost += 1
            elif not item.future.done():
                item.future.set_exception(exc)
        if lost:
            logger.error(
                "write transaction rolled back, %d queued writes lost: %s: %s",
                lost,
                type(exc).__name__,
                exc,
            )


def _settle(item: _QueuedWrite, outcome: Outcome) -> None:
    if item.future is not None:
        if item.future.done():  # the caller was cancelled; the write itself still happened
            return
        if outcome.error is None:
            item.future.set_result(outcome.value)
        else:
            item.future.set_exception(outcome.error)
    elif outcome.error is not None:
        # Type and message only: parameters may hold data that must never reach the logs.
        logger.error(
            "queued write failed and was rolled back: %s: %s",
            type(outcome.error).__name__,
            outcome.error,
        )
