"""The cluster settler: synchronous ``submit`` for a ticket's end, group-committed writes.

A request ends from a ``finally`` (a stream's generator during cancellation), where nothing
can be awaited; the embedded ticket hands its charge row to the storage writer's queue for
the same reason. In cluster mode the ticket hands ``(hold, cost, reference, estimated)`` to
this settler, which writes batches with ``PgMoneyStore.settle_many`` — one round trip and
one commit per batch, like the SQLite writer's group commit (docs/scaling.md §2).

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

from relay.cluster.pg_money import ClusterHold, PgMoneyStore, Settlement

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
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._on_settled = on_settled
        self.batches_written = 0
        self.failures = 0

    @property
    def pending(self) -> int:
        return len(self._queue)

    def submit(
        self, hold: ClusterHold, cost_micros: int, *, reference: str, estimated: bool = False
    ) -> None:
        """Queue a settlement (cost 0 = release); never blocks, never awaits."""
        if isinstance(cost_micros, bool) or not isinstance(cost_micros, int) or cost_micros < 0:
            raise ValueError("cost_micros must be a non-negative int of micro-USD")
        if cost_micros and not reference:
            raise ValueError("a charge needs a reference")
        self._queue.append((hold, cost_micros, reference, estimated))
        self._idle.clear()
        self._wake.set()

    async def run(self) -> None:
        """Write queued settlements until cancelled; a cancel mid-batch leaves it queued."""
        delay = self._retry_initial_s
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue[i] for i in range(min(self._max_batch, len(self._queue)))]
            try:
                results = await self._store.settle_many(batch)
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
            self.batches_written += 1
            if self._on_settled is not None:
                for (hold, _, _, _), result in zip(batch, results, strict=True):
                    self._on_settled(hold, result)

    async def drain(self) -> None:
        """Wait until everything submitted so far is written (graceful shutdown)."""
        await self._idle.wait()
