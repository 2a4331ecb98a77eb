"""The SQLite writer behind ``relay.storage.db.Database``: the write queue, the group
commit window and the commit of a batch, retried whole through storage faults.

``Database`` (relay.storage.db) is the store callers use; this is its writer half, moved
here as it was. How the queue behaves (group commit, durable writes, faults, closing) is
told in relay.storage.db's docstring.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from relay.errors import StorageUnavailable
from relay.storage.batch import Outcome, StorageFault, WriteFn, run_batch

__all__ = ["DatabaseClosed", "GroupCommitWriter", "QueuedWrite"]

# The writer's log lines keep the logger name they have always had (relay.storage.db).
logger = logging.getLogger("relay.storage.db")

# Retry backoff after a storage fault: doubling from the first, capped (seconds).
_RETRY_FIRST_S = 0.05
_RETRY_MAX_S = 1.0
# A batch whose oldest write waited this long past the flush window, or that holds more
# writes than this, is committed by the writer's own thread, not the background one
# (``_executor_for``). The size cap bounds how long a batch can sit with a starved
# background thread however fast the machine fills it: 256 usage writes are ~4 ms of
# CPU, a few hundred ms at nice 19's share of a saturated core, far from storage_stall_s.
_CATCH_UP_AFTER_S = 0.1
_BACKGROUND_MAX_BATCH = 256


class DatabaseClosed(RuntimeError):
    """The database is closing or closed and accepts no more work."""


@dataclass(slots=True)
class QueuedWrite:
    fn: WriteFn
    future: asyncio.Future[Any] | None  # None for fire-and-forget writes
    queued_at: float = 0.0  # loop time


class GroupCommitWriter:
    """The one writer connection, its thread and its queue (``Database`` extends it)."""

    def __init__(
        self,
        writer_conn: sqlite3.Connection,
        executor: ThreadPoolExecutor,
        *,
        flush_interval_s: float,
        max_queue: int,
        durable_wait_s: float | None,
        close_retry_s: float,
        background: ThreadPoolExecutor | None = None,
    ) -> None:
        self.commits = 0  # committed write transactions (batches), for tests and metrics
        self.faults = 0  # failed commit attempts (each retried), for tests and metrics
        self.last_fault: str | None = None  # why the last attempt failed; None once committed
        # The last attempt failed for a reason that does not pass by itself (disk full,
        # read-only, I/O error), as opposed to a lock another connection holds for a while.
        self.hard_fault = False
        self._last_fault_at = 0.0
        self.lost_on_close = 0  # writes given up when closing on a broken storage
        self._durable_wait_s = durable_wait_s
        self._close_retry_s = close_retry_s
        self._in_flight: list[QueuedWrite] = []  # the batch being committed (or retried)
        # Told each committed batch's duration in seconds (the metrics histogram); must not block.
        self.commit_observer: Callable[[float], None] | None = None
        self._writer_conn = writer_conn
        self._executor = executor
        # Routine flushes run here when given: a thread at the lowest priority, so that on
        # a core it shares with the event loop a flush waits for the loop to be idle.
        self._background = background
        self._flush_interval_s = flush_interval_s
        self._max_queue = max_queue
        self._queue: deque[QueuedWrite] = deque()
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

    # -- the writer -----------------------------------------------------------------------

    def _ensure_accepting(self) -> None:
        if self._closing:
            raise DatabaseClosed("database is closing; no more writes are accepted")

    def _append(self, item: QueuedWrite) -> None:
        now = asyncio.get_running_loop().time()
        item.queued_at = now
        if not self._queue:
            self._oldest_queued_at = now
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
                self._processed_seq += await self._commit_batch(self._take_batch())
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

    def _take_batch(self) -> list[QueuedWrite]:
        batch = list(self._queue)
        self._queue.clear()
        self._taken_seq += len(batch)
        self._space.set()
        return batch

    async def _commit_batch(self, batch: list[QueuedWrite]) -> int:
        """Commit ``batch``, retrying storage faults; returns how many writes it settled."""
        self._in_flight = batch
        settled = 0
        attempt = 0
        give_up_at: float | None = None
        loop = asyncio.get_running_loop()
        started = loop.time()
        executor = self._executor_for(batch, started)
        try:
            while batch:
                durable = any(item.future is not None for item in batch)
                # Durable writes (admin actions, top-ups) run in savepoints from the start;
                # a storage-fault retry runs them again, which is safe: nothing of the
                # rolled-back attempt remains, and they change memory only after commit.
                replayable = not durable
                run = functools.partial(
                    run_batch,
                    self._writer_conn,
                    [item.fn for item in batch],
                    replayable=replayable,
                    durable=durable,
                )
                try:
                    outcomes = await loop.run_in_executor(executor, run)
                except Exception as exc:  # the whole transaction rolled back: retry it
                    attempt += 1
                    self._note_fault(exc, attempt, len(batch))
                    # Closing: nobody should wait out durable_wait_s for a broken disk.
                    settled += self._fail_expired_durable(batch, exc, every=self._closing)
                    if self._closing:
                        give_up_at = give_up_at or loop.time() + self._close_retry_s
                        if loop.time() >= give_up_at:
                            settled += self._give_up(batch, exc)
                            return settled
                    await asyncio.sleep(min(_RETRY_MAX_S, _RETRY_FIRST_S * 2 ** (attempt - 1)))
                    # What was queued meanwhile joins the retry: one commit catches up.
                    batch.extend(self._take_batch())
                    executor = self._executor
                    continue
                if attempt:
                    logger.warning(
                        "storage recovered: %d queued writes committed after %d failed attempts",
                        len(batch),
                        attempt,
                    )
                self.commits += 1
                if self.commit_observer is not None:
                    self.commit_observer(loop.time() - started)
                self.last_fault = None
                self.hard_fault = False
                for item, outcome in zip(batch, outcomes, strict=True):
                    _settle(item, outcome)
                return settled + len(batch)
            return settled
        finally:
            self._in_flight = []

    def _executor_for(self, batch: list[QueuedWrite], now: float) -> ThreadPoolExecutor:
        """The background thread for a routine flush; the writer's own thread when the
        batch must not wait for an idle core: someone awaits it, relay is closing, it is
        large (``_BACKGROUND_MAX_BATCH``), or the writer has fallen behind (the batch's
        oldest write waited past its window by more than ``_CATCH_UP_AFTER_S``: the
        background thread could not get the core)."""
        if self._background is None or self._closing:
            return self._executor
        if any(item.future is not None for item in batch):
            return self._executor
        if len(batch) > _BACKGROUND_MAX_BATCH:
            return self._executor
        if now - batch[0].queued_at > self._flush_interval_s + _CATCH_UP_AFTER_S:
            return self._executor
        return self._background

    def _note_fault(self, exc: Exception, attempt: int, size: int) -> None:
        self.faults += 1
        reason = exc.reason if isinstance(exc, StorageFault) else f"{type(exc).__name__}: {exc}"
        self.last_fault = reason
        self._last_fault_at = asyncio.get_running_loop().time()
        self.hard_fault = not (isinstance(exc, StorageFault) and exc.waits_it_out)
        if attempt == 1 or attempt % 10 == 0:  # a stall must not flood the log
            logger.error(
                "could not commit %d queued writes (attempt %d), retrying: %s",
                size,
                attempt,
                reason,
            )

    def _fail_expired_durable(
        self, batch: list[QueuedWrite], exc: Exception, *, every: bool = False
    ) -> int:
        """Fail (and drop from ``batch``) the durable writes that waited their limit."""
        now = asyncio.get_running_loop().time()
        keep: list[QueuedWrite] = []
        failed = 0
        for item in batch:
            waited = now - item.queued_at
            limit = self._durable_wait_s
            if item.future is not None and (every or (limit is not None and waited >= limit)):
                failed += 1
                if not item.future.done():
                    error = StorageUnavailable(
                        "the database could not commit this change; nothing was applied"
                    )
                    error.__cause__ = exc
                    item.future.set_exception(error)
            else:
                keep.append(item)
        batch[:] = keep
        return failed

    def _give_up(self, batch: list[QueuedWrite], exc: Exception) -> int:
        """Closing on a storage that cannot commit: report what is lost, never hang."""
        lost = len(batch)
        self.lost_on_close += lost
        self._fail_batch(batch, exc)
        batch.clear()
        return lost

    def _signal_batch_done(self) -> None:
        self._batch_done.set()
        self._batch_done = asyncio.Event()

    @staticmethod
    def _fail_batch(batch: list[QueuedWrite], exc: Exception) -> None:
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


def _settle(item: QueuedWrite, outcome: Outcome) -> None:
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
