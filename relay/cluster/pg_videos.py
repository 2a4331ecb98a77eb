"""Video jobs on PostgreSQL: the ``VideoStore`` of cluster mode (``relay.jobs.video``).

A job is created on any instance and followed by whichever instance the job runner
elected (``relay.cluster.job_runner``); any instance answers ``GET /v1/videos/{id}`` from
the ``video_jobs`` row. The rules are the embedded ones (``relay.jobs.video_store``):

- **The hold outlives the request and every instance.** ``hand_over`` moves the request's
  PostgreSQL hold to the cluster (``holds.instance_id = JOBS_OWNER``, ``request_id`` = the
  job id) in the SAME transaction as the job's row, so a job is stored with its hold or
  not at all (then the request's ticket releases the hold; were the move committed and
  its answer lost, that release finds no hold of this instance and does nothing). No
  lease covers it: the lease sweep never releases it, the runner settles or releases it
  once when the job completes or fails upstream (an upstream that never answers is given
  up after ``MAX_POLL_FAILURES`` polls, which releases it). A job that has no hold (one
  copied by ``relay migrate`` from a stopped embedded relay) gets its quote held, or a
  zero hold, when a runner first sees it, as the embedded poller does at start.
- **Settled exactly once.** ``complete`` and ``fail`` run in one transaction that first
  locks the job's row and re-checks it is unfinished (two runners for a moment — one
  whose connection just died — cannot both end it), then settles or releases the hold
  (``relay_settle``: the hold row is deleted once, the charge reference is the job id and
  unique in the ledger), then writes the usage row and the final state: one commit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from relay.admission.ticket import Ticket
from relay.cluster.admission import ClusterTicket
from relay.cluster.pg_leases import LeaseLost
from relay.cluster.pg_money import PgMoneyStore
from relay.cluster.pg_usage import insert_usage
from relay.errors import StorageUnavailable
from relay.jobs.video import COLUMNS, UNFINISHED, VideoJob, log, usage_record
from relay.storage.schema_cluster_jobs import JOBS_OWNER

__all__ = ["PgVideoStore"]

_INSERT = (
    f"INSERT INTO video_jobs ({', '.join(COLUMNS)})"
    f" VALUES ({', '.join(f'${i + 1}' for i in range(len(COLUMNS)))})"
)
_OPEN = "status IN ('queued', 'in_progress')"
# Unfinished jobs with no charge yet (a charge's reference is its job id), and whether the
# cluster holds their quote.
_RUNNING = f"""
SELECT v.*, EXISTS (SELECT 1 FROM holds h WHERE h.instance_id = $1 AND h.request_id = v.id)
       AS held
  FROM video_jobs v
 WHERE v.{_OPEN}
   AND NOT EXISTS (SELECT 1 FROM ledger l WHERE l.kind = 'charge' AND l.reference = v.id)
 ORDER BY v.created_at_ms
"""
_FINAL = (
    "UPDATE video_jobs SET status = $2, progress = $3, cost_micros = $4, error_code = $5,"
    " updated_at_ms = $6, completed_at_ms = $7 WHERE id = $1"
)
assert UNFINISHED == ("queued", "in_progress")  # _OPEN spells them in SQL


class PgVideoStore:
    """Jobs in ``video_jobs``, holds owned by the cluster; ``instance_id`` is this instance
    (whose lease places a hold for a job that has none)."""

    def __init__(self, pool: Any, money: Callable[[], PgMoneyStore]) -> None:
        import asyncpg  # the 'cluster' extra (imported here: app.py imports this module)

        self.errors: tuple[type[BaseException], ...] = (
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
        )
        self._pool = pool
        # The runtime's current money store: its lease (a rejoin replaces it) and the budget
        # periods relay_hold checks.
        self._money = money
        # The jobs this instance polled last round (only on the elected runner), kept across
        # rounds for their count of failed polls.
        self._jobs: dict[str, VideoJob] = {}
        self._unheld: set[str] = set()  # jobs no hold fits: not retried every round

    @property
    def count(self) -> int:
        return len(self._jobs)

    async def resume(self) -> int:
        """Nothing to re-place: holds live in PostgreSQL. The runner reads the table."""
        return 0

    async def running(self) -> list[VideoJob]:
        """Every unfinished job of the cluster, read afresh (any instance may have added one)."""
        rows = await self._pool.fetch(_RUNNING, JOBS_OWNER)
        jobs: dict[str, VideoJob] = {}
        for row in rows:
            job = self._jobs.get(row["id"]) or VideoJob.from_row(row)
            jobs[job.id] = job
            if not row["held"] and job.account_id is not None and job.id not in self._unheld:
                await self._place_hold(job)
        self._jobs = jobs
        return list(jobs.values())

    async def _place_hold(self, job: VideoJob) -> None:
        """The job's quote, else a zero hold (it was admitted: it runs), placed under this
        instance's lease and moved to the cluster in one transaction."""
        money = self._money()
        day, week, month = money.period_starts()
        async with self._pool.acquire() as conn, conn.transaction():
            for key, amount in ((job.key_id, job.estimate_micros), (job.key_id, 0), (None, 0)):
                row = await conn.fetchrow(
                    "SELECT * FROM relay_hold($1, $2, $3, $4, $5, $5, 0, $6, $7, $8, $9)",
                    money.instance_id,
                    job.account_id,
                    key,
                    job.id,
                    amount,
                    day,
                    week,
                    month,
                    money.spend_window(),
                )
                if row["outcome"] == "lease_lost":  # transient for the job: next round
                    raise LeaseLost(f"instance {money.instance_id}: no hold placed")
                if row["outcome"] == "ok":
                    await conn.execute(
                        "UPDATE holds SET instance_id = $1 WHERE id = $2",
                        JOBS_OWNER,
                        row["hold_id"],
                    )
                    return
        self._unheld.add(job.id)
        log.error("video job %s: no hold fits its account; it will not be charged", job.id)

    async def hand_over(self, job: VideoJob, ticket: Ticket) -> None:
        hold = ticket.cluster_hold if isinstance(ticket, ClusterTicket) else None
        job.updated_at_ms = job.created_at_ms
        async with self._pool.acquire() as conn, conn.transaction():
            if hold is not None:
                moved = await conn.fetchval(
                    "UPDATE holds SET instance_id = $1, request_id = $2"
                    " WHERE id = $3 AND instance_id = $4 RETURNING id",
                    JOBS_OWNER,
                    job.id,
                    hold.hold_id,
                    hold.instance_id or self._money().instance_id,
                )
                if moved is None:  # released by the lease sweep: this instance is fenced
                    raise StorageUnavailable("this instance's cluster lease expired; retry")
            await conn.execute(_INSERT, *job.row())
        if isinstance(ticket, ClusterTicket):
            ticket.handed_over()
        else:
            ticket.release()

    async def find(self, job_id: str) -> VideoJob | None:
        row = await self._pool.fetchrow("SELECT * FROM video_jobs WHERE id = $1", job_id)
        return None if row is None else VideoJob.from_row(row)

    async def save_progress(self, job: VideoJob) -> None:
        await self._pool.execute(
            f"UPDATE video_jobs SET status = $2, progress = $3, updated_at_ms = $4"
            f" WHERE id = $1 AND {_OPEN}",
            job.id,
            job.status,
            job.progress,
            job.updated_at_ms,
        )

    async def complete(self, job: VideoJob, cost_micros: int, units: int) -> None:
        await self._end(job, cost_micros, status=200, units=units)

    async def fail(self, job: VideoJob) -> None:
        await self._end(job, 0, status=502, units=0)

    async def _end(self, job: VideoJob, cost_micros: int, *, status: int, units: int) -> None:
        """Hold, usage row and final state in one transaction, once (module docstring)."""
        async with self._pool.acquire() as conn, conn.transaction():
            still_open = await conn.fetchval(
                f"SELECT 1 FROM video_jobs WHERE id = $1 AND {_OPEN} FOR UPDATE", job.id
            )
            if still_open is None:  # another runner ended it first
                self._jobs.pop(job.id, None)
                return
            hold = await conn.fetchrow(
                "SELECT id, worst_case_micros FROM holds WHERE instance_id = $1"
                " AND request_id = $2",
                JOBS_OWNER,
                job.id,
            )
            if hold is not None:
                # A zero hold charges nothing (relay_settle caps at the worst case, and a
                # zero charge row is not a charge): it is released.
                charge = cost_micros if hold["worst_case_micros"] > 0 else 0
                settled = await conn.fetchrow(
                    "SELECT * FROM relay_settle($1, $2, $3, $4, NULL, $5)",
                    hold["id"],
                    JOBS_OWNER,
                    charge,
                    job.id,
                    self._money().spend_window(),
                )
                cost_micros = int(settled["charged_micros"])
            job.cost_micros = cost_micros
            await insert_usage(conn, [usage_record(job, status=status, units=units)])
            await conn.execute(
                _FINAL,
                job.id,
                job.status,
                job.progress,
                job.cost_micros,
                job.error_code,
                job.updated_at_ms,
                job.completed_at_ms,
            )
        self._jobs.pop(job.id, None)
