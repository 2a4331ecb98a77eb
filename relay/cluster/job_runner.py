"""The cluster's periodic jobs, run by one instance at a time: elected by an advisory lock.

Video polling, retention, auto top-up and the money alerts must not run on every instance
at once (N pollers would each ask the upstream about every job; N retention runs would
archive the same rows twice; N alert rounds would send each alert N times). This is the
cluster's ONE election: every such job is a ``ClusterJob`` of this runner.
Every instance runs a ``JobRunner``; each round (``round_s``) one that is not the leader
tries ``pg_try_advisory_lock`` on a connection of its own, never returned to a pool. The
lock is session-level: it is held for as long as that connection lives, so

- the leader keeps it round after round without asking again (one ``SELECT 1`` per round
  checks that the connection, and so the lock, is still there);
- when the leader dies (kill -9, a lost machine, a dropped connection) PostgreSQL ends its
  session and frees the lock, and whichever instance asks next takes over, within one
  round of the server noticing (at once for a killed process: its socket closes);
- a graceful stop unlocks and closes the connection, so another takes over at its next round.

Leadership is a schedule, not a fence: an instance whose connection died mid-round may
still finish the step it was running. Each job is therefore safe to run twice at once on
its own (a video job's final state, charge and usage row commit in one transaction that
first locks the job's row and re-checks it is unfinished; retention runs under a lock of
its own held on the connection that does its writes; an auto top-up refill is opened under
the account's row lock in ``PgPayments.open_auto_topup`` and credited once per reference)
— the runner only keeps them from running N times over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.jobs.periodic import PeriodicTask

__all__ = ["RUNNER_LOCK", "ClusterJob", "JobRunner"]

log = logging.getLogger(__name__)

# Any constant shared by every instance and no other lock's (the migration lock is +0, the
# lease reaper's +1, the audit chain's +2, retention's +3, receipts' +18): a transaction
# lock on the same key would wait for as long as the leader leads.
RUNNER_LOCK = 0x72656C6179 + 0xB1

Connect = Callable[[], Awaitable[Any]]


@dataclass
class ClusterJob:
    """One periodic step the leader runs every ``interval_s``, the first time
    ``first_after_s`` after it became leader (not during a start-up's traffic).

    ``interval_s`` may be a callable, read each time the job is scheduled: a setting a
    config reload may change (the billing jobs' ``[alerts_settings] check_interval_s``)."""

    name: str
    step: Callable[[], Awaitable[object]]
    interval_s: float | Callable[[], float]
    first_after_s: float = 0.0
    due_at: float = field(default=0.0, init=False)

    def interval(self) -> float:
        return self.interval_s() if callable(self.interval_s) else self.interval_s


class JobRunner:
    """This instance's candidacy; ``start``/``stop`` in the app's lifespan."""

    def __init__(
        self,
        connect: Connect,
        jobs: Sequence[ClusterJob],
        *,
        round_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connect
        self.jobs = list(jobs)
        self._clock = clock
        self._conn: Any = None
        self.leader = False
        self.terms = 0  # how many times this instance became leader (for tests and logs)
        import asyncpg  # the 'cluster' extra (imported here: app.py imports this module)

        # What a lost connection raises: the session, and any lock it held, is gone.
        self._lost_errors: tuple[type[BaseException], ...] = (
            OSError,
            TimeoutError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
        )
        self._periodic = PeriodicTask(
            "relay-cluster-jobs", self.round, interval_s=round_s, first_after_s=0.0, log=log
        )

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        """Stop running jobs, then give the lock up at once (another takes over next round)."""
        await self._periodic.stop()
        await self._resign()

    async def round(self) -> None:
        """Lead (or try to), then run every job that is due."""
        if not await self._lead():
            return
        for job in self.jobs:
            if self._clock() < job.due_at:
                continue
            job.due_at = self._clock() + job.interval()
            try:
                await job.step()
            except Exception as exc:  # named reason: one failed job must not stop the others
                log.error("cluster job %s failed: %s: %s", job.name, type(exc).__name__, exc)

    async def _lead(self) -> bool:
        try:
            if self._conn is None or self._conn.is_closed():
                self._lost()
                self._conn = await self._connect()
            if self.leader:
                await self._conn.fetchval("SELECT 1")  # the session, and so the lock, lives
                return True
            if await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", RUNNER_LOCK):
                self.leader = True
                self.terms += 1
                now = self._clock()
                for job in self.jobs:
                    job.due_at = now + job.first_after_s
                log.info("cluster: this instance now runs the cluster's jobs")
            return self.leader
        except self._lost_errors as exc:
            log.warning("cluster: job runner connection failed: %s", type(exc).__name__)
            await self._drop()
            return False

    def _lost(self) -> None:
        if self.leader:
            log.warning("cluster: the job runner's lock was lost with its connection")
        self.leader = False

    async def _drop(self) -> None:
        self._lost()
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def _resign(self) -> None:
        conn, self._conn = self._conn, None
        self.leader = False
        if conn is None or conn.is_closed():
            return
        try:
            await conn.close(timeout=2)  # ends the session: the lock goes with it
        except self._lost_errors:
            conn.terminate()
