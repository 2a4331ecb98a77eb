"""The cluster settler: synchronous ``submit`` for a ticket's end, group-committed writes.

A request ends from a ``finally`` (a stream's generator during cancellation), where nothing
can be awaited; the embedded ticket hands its charge row to the storage writer's queue for
the same reason. In cluster mode the ticket hands ``(hold, cost, reference, estimated)`` to
this settler, which writes batches with ``PgMoneyStore.settle_many`` — one round trip and
one commit per batch, like the SQLite writer's group commit (docs/scaling.md §2).

Usage rows (``record``) travel in the same queue's batches and are inserted in the same
transaction as the settlements (``relay.cluster.pg_usage``): one commit records and bills.
``committed`` lets a caller wait until everything it queued is durable (a non-stream 200
waits for it: docs/scaling.md §2).

A failed batch (the database is unreachable) stays queued and is retried with backoff; it
can be retried safely because settling a hold is idempotent (a hold settles once, then
answers ``closed``). If the process dies with settlements queued, its lease runs out and
the holds are released and recorded as abandoned (``relay.cluster.pg_leases``): an account
is never charged twice and never left held.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

import msgspec

from relay.cluster.pg_money import ClusterHold, PgMoneyStore, Settlement
from relay.cluster.pg_usage import insert_usage
from relay.usage.log import UsageRecord

__all__ = ["Settler"]

log = logging.getLogger(__name__)

Item = tuple[ClusterHold, int, str, bool]


class Settler:
    """One instance's queue of settlements and the task that writes them."""

    def __init__(
        self,
        store: PgMoneyStore,
        *,
        max_batch: int = 256,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 2.0,
        on_settled: Callable[[ClusterHold, Settlement], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._store = store
        self._max_batch = max_batch
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._queue: deque[Item] = deque()
        # Each queued item's sequence number, in the same order as its queue.
        self._queue_seq: deque[int] = deque()
        self._usage: deque[tuple[int, UsageRecord]] = deque()
        self._seq = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._on_settled = on_settled
        self.batches_written = 0
        self.failures = 0

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._usage)

    def submit(
        self, hold: ClusterHold, cost_micros: int, *, reference: str, estimated: bool = False
    ) -> None:
        """Queue a settlement (cost 0 = release); never blocks, never awaits."""
        if isinstance(cost_micros, bool) or not isinstance(cost_micros, int) or cost_micros < 0:
            raise ValueError("cost_micros must be a non-negative int of micro-USD")
        if cost_micros and not reference:
            raise ValueError("a charge needs a reference")
        self._seq += 1
        self._queue.append((hold, cost_micros, reference, estimated))
        self._queue_seq.append(self._seq)
        self._idle.clear()
        self._wake.set()

    def record(self, row: UsageRecord) -> None:
        """Queue a usage row, written with the next batch's settlements; never awaits."""
        self._seq += 1
        self._usage.append((self._seq, row))
        self._idle.clear()
        self._wake.set()

    async def committed(self) -> None:
        """Wait until everything queued so far is committed (retries included)."""
        target = self._seq
        if self._written_through() >= target:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        await future

    def _written_through(self) -> int:
        """The highest sequence number below which nothing is still queued."""
        firsts: list[int] = []
        if self._queue_seq:
            firsts.append(self._queue_seq[0])
        if self._usage:
            firsts.append(self._usage[0][0])
        return min(firsts) - 1 if firsts else self._seq

    def _wake_waiters(self) -> None:
        through = self._written_through()
        waiting = []
        for target, future in self._waiters:
            if target <= through:
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((target, future))
        self._waiters = waiting

    async def run(self) -> None:
        """Write queued settlements until cancelled; a cancel mid-batch leaves it queued."""
        delay = self._retry_initial_s
        while True:
            if not self._queue and not self._usage:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue[i] for i in range(min(self._max_batch, len(self._queue)))]
            rows = [self._usage[i][1] for i in range(min(self._max_batch, len(self._usage)))]
            try:
                results = await self._write(batch, rows)
            except Exception as exc:
                # Named reason: an unreachable database, a timeout or a server-side error (a
                # failover in progress) must not kill the settler: the batch stays queued and
                # is retried. Programming errors the database cannot cause are re-raised.
                if isinstance(exc, TypeError | ValueError):
                    raise
                self.failures += 1
                log.warning("settler: batch of %d failed (%s); retrying", len(batch), exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
                continue
            delay = self._retry_initial_s
            for _ in batch:
                self._queue.popleft()
                self._queue_seq.popleft()
            for _ in rows:
                self._usage.popleft()
            self.batches_written += 1
            self._wake_waiters()
            if self._on_settled is not None:
                for (hold, _, _, _), result in zip(batch, results, strict=True):
                    self._on_settled(hold, result)

    async def _write(self, batch: list[Item], rows: list[UsageRecord]) -> list[Settlement]:
        if not rows:
            return await self._store.settle_many(batch)
        async with self._store.transaction() as conn:
            results = await self._store.settle_many(batch, conn=conn) if batch else []
            await insert_usage(conn, _as_billed(batch, results, rows))
        return results

    async def drain(self) -> None:
        """Wait until everything submitted so far is written (graceful shutdown)."""
        await self._idle.wait()


def _as_billed(
    batch: list[Item], results: list[Settlement], rows: list[UsageRecord]
) -> list[UsageRecord]:
    """The usage rows with the cost the database charged: a charge that found its hold gone
    (released by the lease sweep after this instance's lease ran out: fenced) charged
    nothing, and its row must say so, or the usage sums would exceed the ledger's."""
    unbilled = {
        reference
        for (_, cost, reference, _), result in zip(batch, results, strict=True)
        if cost and result.outcome in ("closed", "duplicate_reference")
    }
    if not unbilled:
        return rows
    for row in rows:
        if row.request_id in unbilled:
            log.warning("settler: %s was not charged (its hold was already closed)", row.request_id)
    return [
        msgspec.structs.replace(row, cost_micros=0) if row.request_id in unbilled else row
        for row in rows
    ]
