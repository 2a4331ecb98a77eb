"""One instance runs the cluster's billing jobs: a session advisory lock decides which.

``JobLock.held()`` keeps one pooled connection of its own and takes
``pg_try_advisory_lock(key)`` on it: the instance that gets it runs the jobs until its
connection (or process) dies, when PostgreSQL releases the lock and the next instance to
ask takes it over within one round. Each round checks the connection is still alive (one
``SELECT 1``) before running anything, so a holder whose session was lost stops.

The jobs themselves never rely on the election for money: a refill is opened under the
account's row lock (``PgPayments.open_auto_topup``) and a credit is once per reference, so
two holders for an instant (a stalled connection) still charge and credit once.

``ElectedJobs`` runs its steps every round on the holder only. The lock is keyed apart
from any other election (``BILLING_JOBS_LOCK``), so it can later be folded into a single
cluster job runner without changing what the jobs guarantee. The holder keeps one pooled
connection for as long as it holds the lock.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from relay.jobs.periodic import PeriodicTask

__all__ = ["BILLING_JOBS_LOCK", "ElectedJobs", "JobLock"]

log = logging.getLogger(__name__)

# Any constant shared by every instance: who runs auto top-up, the alert watcher and mail.
BILLING_JOBS_LOCK = 0x72656C6179 + 0xB1


class JobLock:
    def __init__(self, pool: Any, key: int) -> None:
        self._pool = pool
        self._key = key
        self._conn: Any = None

    async def held(self) -> bool:
        """True while this instance holds the lock (taking it when it is free)."""
        if self._conn is not None:
            try:
                await self._conn.fetchval("SELECT 1")
                return True
            except Exception as exc:  # named reason: the session is gone, and the lock with it
                log.warning("cluster jobs: lost the job lock's connection: %s", exc)
                await self._drop()
        conn = await self._pool.acquire()
        try:
            taken = await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key)
        except BaseException:
            await self._pool.release(conn)
            raise
        if not taken:
            await self._pool.release(conn)
            return False
        self._conn = conn
        log.info("cluster jobs: this instance runs them now")
        return True

    async def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # closing: a dead session released it anyway
                await self._conn.execute("SELECT pg_advisory_unlock($1)", self._key)
            await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        with contextlib.suppress(Exception):
            await self._pool.release(conn)


class ElectedJobs:
    """Every ``interval_s`` (a callable: a reload may change it), the holder runs ``steps``."""

    def __init__(
        self,
        lock: JobLock,
        steps: Sequence[Callable[[], Awaitable[object]]],
        *,
        interval_s: Callable[[], float],
    ) -> None:
        self._lock = lock
        self._steps = list(steps)
        self._interval_s = interval_s
        self._periodic = PeriodicTask(
            "relay-cluster-jobs", self.round, interval_s=interval_s(), first_after_s=0.5, log=log
        )

    def start(self) -> None:
        self._periodic.start()

    async def aclose(self) -> None:
        await self._periodic.stop()
        await self._lock.release()

    async def round(self) -> bool:
        """One round: True when this instance held the lock and ran the steps."""
        self._periodic.interval_s = self._interval_s()
        if not await self._lock.held():
            return False
        for step in self._steps:
            try:
                await step()
            except Exception as exc:  # named reason: one job's failure must not stop the others
                log.error("cluster jobs: %s failed: %s: %s", step, type(exc).__name__, exc)
        return True
