"""relay's storage layer: one SQLite file, ONE writer, a few read-only readers.

The process is the only writer of the database, so every write goes through one queue owned
by one writer connection (the idea of Datasette's ``database.py``):

* ``enqueue(fn)`` / ``await enqueue_wait(fn)`` queue a fire-and-forget write (settlements, usage
  rows). The writer group-commits everything queued within ``flush_interval_s`` as ONE
  ``BEGIN IMMEDIATE`` transaction.
* ``await write(fn)`` / ``await execute_write(sql, params)`` queue a durable write (top-ups,
  account and key changes, admin actions) and return once its transaction is COMMITTED. A
  durable write does not wait out the flush interval: it asks the writer to commit now.
* A failing item (say a UNIQUE violation) rolls back only itself: in a batch holding a
  durable write every item runs in its own ``SAVEPOINT``; a batch of only fire-and-forget
  writes runs without them and, if one fails, is rolled back and replayed with them
  (``relay.storage.batch``). An awaiting caller gets the exception; a fire-and-forget
  failure is logged on ``relay.storage.db`` with exception type and message only, never
  the parameters. A batch whose transaction fails as a whole (say, a full disk) fails
  every awaiting caller and logs how many fire-and-forget writes were lost; it is not
  retried yet (docs/architecture.md §11).
* Nothing is ever dropped silently. A full queue makes ``enqueue`` raise ``WriteQueueFull``
  and makes ``enqueue_wait``/``write`` wait for space. ``close()`` stops accepting, drains
  and commits every queued write, then closes all connections.
* A batch the storage cannot commit (``SQLITE_BUSY`` past ``busy_timeout``, ``SQLITE_FULL``,
  ``SQLITE_IOERR``, a read-only file: ``StorageFault``) is retried whole, with backoff,
  until it commits; later writes join it. Durable writes too: some carry a charge already
  applied in memory (a video job's settlement), so by default they wait for the commit.
  With ``durable_wait_s`` set, one whose caller has waited that long is failed instead
  (``StorageUnavailable``: nothing of it committed, so the caller changes no memory); so
  is every durable write still uncommitted when closing gives up. ``stalled_for()``,
  ``last_fault`` and ``hard_fault`` tell the health check (``relay.storage.health``) how
  long nothing could commit, and why. While closing, retries stop
  after ``close_retry_s``: the writes still uncommitted are counted, logged and reported
  by ``close()`` raising ``StorageFault``.
* Batches holding a durable write commit with ``synchronous=FULL``.
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
import os
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from relay.storage.batch import (
    CONNECTION_PRAGMAS,
    DEFAULT_BUSY_TIMEOUT_MS,
    StorageFault,
    open_writer_connection,
)
from relay.storage.files import create_private_file, make_private_dir, secure_existing
from relay.storage.migrations import MIGRATIONS, Migration, apply_migrations
from relay.storage.writer import DatabaseClosed, GroupCommitWriter, QueuedWrite

__all__ = ["Database", "DatabaseClosed", "StorageFault", "WriteQueueFull"]

T = TypeVar("T")

logger = logging.getLogger(__name__)


class WriteQueueFull(RuntimeError):
    """``enqueue`` found the write queue at ``max_queue``; use ``await enqueue_wait`` instead."""


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


class Database(GroupCommitWriter):
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
        durable_wait_s: float | None = None,
        close_retry_s: float = 2.0,
        background: ThreadPoolExecutor | None = None,
    ) -> None:
        super().__init__(
            writer_conn,
            executor,
            flush_interval_s=flush_interval_s,
            max_queue=max_queue,
            durable_wait_s=durable_wait_s,
            close_retry_s=close_retry_s,
            background=background,
        )
        self.path = path
        self._reader_conns = readers
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        for reader in readers:
            self._readers.put_nowait(reader)
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
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        durable_wait_s: float | None = None,
        close_retry_s: float = 2.0,
        writer_nice: int = 0,
        background_nice: int | None = None,
    ) -> Database:
        """Create or open the database file, apply migrations, start the writer.

        ``writer_nice`` > 0 lowers the writer thread's scheduling priority (Linux only), so
        that on a core it shares with the event loop a group commit yields the core to a
        request instead of splitting it with it (docs/performance.md, "The writer's flush").
        """
        if flush_interval_s < 0 or read_connections < 1 or max_queue < 1:
            raise ValueError("need flush_interval_s >= 0, read_connections >= 1, max_queue >= 1")
        path = Path(path)
        make_private_dir(path.parent)
        # SQLite gives -wal and -shm the database file's mode: create it 0600 first.
        create_private_file(path)
        secure_existing(*(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")))
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-db-writer")
        background = _background_thread(background_nice, writer_nice)
        writer: sqlite3.Connection | None = None
        readers: list[aiosqlite.Connection] = []
        try:
            connect = functools.partial(
                open_writer_connection, path, busy_timeout_ms=busy_timeout_ms
            )
            writer = await loop.run_in_executor(executor, connect)
            if writer_nice:
                await loop.run_in_executor(executor, _lower_thread_priority, writer_nice)
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
            if background is not None:
                background.shutdown(wait=True)
            raise
        return cls(
            path,
            writer,
            executor,
            readers,
            flush_interval_s=flush_interval_s,
            max_queue=max_queue,
            durable_wait_s=durable_wait_s,
            close_retry_s=close_retry_s,
            background=background,
        )

    @property
    def pending_writes(self) -> int:
        """Writes queued and not yet taken by the writer (excludes the batch in flight)."""
        return len(self._queue)

    @property
    def closing(self) -> bool:
        return self._closing

    def stalled_for(self) -> float:
        """Seconds the oldest write not yet committed has waited (0 when all is committed)."""
        oldest: float | None = None
        if self._in_flight:
            oldest = self._in_flight[0].queued_at
        elif self._queue:
            oldest = self._queue[0].queued_at
        if oldest is None:
            return 0.0
        return max(0.0, asyncio.get_running_loop().time() - oldest)

    def since_fault(self) -> float:
        """Seconds since the last failed commit attempt (large when none failed)."""
        if self.last_fault is None:
            return float("inf")
        return asyncio.get_running_loop().time() - self._last_fault_at

    # -- writes ---------------------------------------------------------------------------

    def enqueue(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        """Queue a fire-and-forget write, committed within ``flush_interval_s``.

        What ``fn`` returns is dropped, unless it is a ``PerBatch`` share: the writer
        applies it with the batch's other shares before the commit (relay.storage.batch).

        Raises ``WriteQueueFull`` when ``max_queue`` writes are waiting (never drops the
        write); callers that can wait should use ``enqueue_wait``.
        """
        self._ensure_accepting()
        if len(self._queue) >= self._max_queue:
            self._hurry.set()
            raise WriteQueueFull(f"write queue is full ({self._max_queue} pending writes)")
        self._append(QueuedWrite(fn, None))

    async def enqueue_wait(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        """Like ``enqueue``, but waits for room when the queue is full (back-pressure)."""
        await self._wait_for_space()
        self._append(QueuedWrite(fn, None))

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in the writer and return its result once committed.

        If ``fn`` raises, its savepoint is rolled back and the exception is raised here.
        If the storage cannot commit for ``durable_wait_s`` (when set) or while closing,
        raises ``StorageUnavailable`` and nothing of ``fn`` was committed. ``fn`` may run more than
        once (a storage fault rolls the batch back and retries it): keep it to SQL.
        Cancelling the caller does not withdraw a write already queued.
        """
        await self._wait_for_space()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._append(QueuedWrite(fn, future))
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
        if self.lost_on_close:
            raise StorageFault(
                f"closed with {self.lost_on_close} writes that the storage could not commit "
                f"({self.last_fault})"
            )

    async def _close_connections(self) -> None:
        # Every connection is closed whatever fails: an open reader's thread (not a
        # daemon) would keep the process alive after the server has stopped.
        try:
            # Taking every reader back waits for reads in flight to finish.
            for _ in self._reader_conns:
                await self._readers.get()
        finally:
            for reader in self._reader_conns:
                try:
                    await reader.close()
                except sqlite3.Error as exc:
                    logger.error("closing a reader failed: %s: %s", type(exc).__name__, exc)
            # The writer closes last so that SQLite checkpoints the WAL into the main file.
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._writer_conn.close
                )
            except sqlite3.Error as exc:
                logger.error("closing the writer failed: %s: %s", type(exc).__name__, exc)
            finally:
                self._executor.shutdown(wait=True)
                if self._background is not None:
                    self._background.shutdown(wait=True)


def _background_thread(nice: int | None, writer_nice: int) -> ThreadPoolExecutor | None:
    """The thread that runs routine flushes at ``nice``, or None (the writer's runs them).

    Only worth a thread when it would run at a lower priority than the writer's own."""
    if nice is None or nice <= writer_nice:
        return None
    background = ThreadPoolExecutor(
        max_workers=1,
        thread_name_prefix="relay-db-background",
        initializer=_lower_thread_priority,
        initargs=(nice,),
    )
    return background


def _lower_thread_priority(nice: int) -> None:
    """Run in the writer thread: raise its nice value by ``nice`` (this thread only).

    Linux schedules threads individually, so ``setpriority`` on the thread's own id changes
    only the writer; elsewhere the id is not a process id, and the writer keeps its priority.
    """
    if sys.platform != "linux":
        return
    thread_id = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread_id)
        os.setpriority(os.PRIO_PROCESS, thread_id, min(19, current + nice))
    except OSError as exc:  # a sandbox may forbid it: the writer only keeps its priority
        logger.warning("could not lower the writer thread's priority: %s", exc)
