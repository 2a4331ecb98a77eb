"""Video jobs in the embedded store: rows in SQLite, holds in the in-memory wallet.

The ``VideoStore`` of a single relay (``relay.jobs.video``). A job's hold is a wallet hold
and dies with the process, so ``resume`` re-places the hold of every unfinished job from
the table (its quote is stored with it). Completion settles the hold in the wallet first,
with nothing that can fail between it and the write of its rows, then writes the charge,
the usage row and the job's final state in ONE transaction: the ledger's unique charge
reference (the job id) and the usage table's unique request id make a second settlement
impossible, and a crash leaves either all three rows or none (then the job resumes).
"""

from __future__ import annotations

import sqlite3

from relay.admission.ticket import Ticket
from relay.errors import QuotaError
from relay.jobs.video import COLUMNS, VideoJob, log, usage_record
from relay.money.ledger import insert_entry
from relay.money.wallet import Hold, LedgerEntry, Wallet
from relay.storage.db import Database
from relay.usage.log import UsageRecord, insert_usage

__all__ = ["EmbeddedVideoStore"]

_INSERT = (
    f"INSERT INTO video_jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
)
_UPDATE = (
    "UPDATE video_jobs SET status = ?, progress = ?, cost_micros = ?, error_code = ?, "
    "updated_at_ms = ?, completed_at_ms = ? WHERE id = ?"
)
_UNFINISHED_JOBS = (
    "SELECT * FROM video_jobs WHERE status IN ('queued', 'in_progress') "
    "AND id NOT IN (SELECT reference FROM ledger WHERE kind = 'charge') ORDER BY created_at_ms"
)


def _update(conn: sqlite3.Connection, job: VideoJob) -> None:
    conn.execute(
        _UPDATE,
        (
            job.status,
            job.progress,
            job.cost_micros,
            job.error_code,
            job.updated_at_ms,
            job.completed_at_ms,
            job.id,
        ),
    )


class EmbeddedVideoStore:
    """The jobs this process follows, in memory, backed by ``video_jobs``."""

    errors: tuple[type[BaseException], ...] = (sqlite3.Error, RuntimeError)

    def __init__(self, db: Database, wallet: Wallet) -> None:
        self._db = db
        self._wallet = wallet
        self._jobs: dict[str, VideoJob] = {}

    @property
    def count(self) -> int:
        return len(self._jobs)

    async def resume(self) -> int:
        for row in await self._db.fetchall(_UNFINISHED_JOBS):
            job = VideoJob.from_row(row)
            job.hold = self.place_hold(job)
            self._jobs[job.id] = job
        return len(self._jobs)

    async def running(self) -> list[VideoJob]:
        return list(self._jobs.values())

    # -- holds ----------------------------------------------------------------------------

    def place_hold(self, job: VideoJob) -> Hold | None:
        """Hold the job's quote for its account; a zero hold if that no longer fits.

        A job that was admitted keeps running whatever happened to the balance since (a
        restart, a lowered limit): with a zero hold its charge is then an overrun.
        """
        account, key = job.account_id, job.key_id
        if account is None or not self._wallet.has_account(account):
            return None
        key = key if key is not None and self._wallet.has_key(key) else None
        for amount in (job.estimate_micros, 0):
            try:
                return self._wallet.hold(
                    account, key, estimate_micros=amount, worst_case_micros=amount
                )
            except QuotaError:
                continue
        log.error("video job %s: no hold fits its account; it will not be charged", job.id)
        return None

    def release_hold(self, job: VideoJob) -> None:
        if job.hold is not None:
            self._wallet.release(job.hold)

    # -- jobs -----------------------------------------------------------------------------

    async def add(self, job: VideoJob) -> None:
        """Store a new job (committed before returning) and follow it."""
        job.updated_at_ms = job.created_at_ms
        await self._db.write(lambda conn: conn.execute(_INSERT, job.row()))
        self._jobs[job.id] = job

    async def hand_over(self, job: VideoJob, ticket: Ticket) -> None:
        """Release and re-hold run with no ``await`` between them, so no other request can
        take the room in between: the job's hold always fits where the request's did. From
        here on the job's hold is this store's to settle; the request's ticket is finished.
        """
        ticket.release()
        job.hold = self.place_hold(job)
        try:
            await self.add(job)
        except BaseException:
            self.release_hold(job)
            raise

    async def find(self, job_id: str) -> VideoJob | None:
        """A running job from memory, else the stored row (finished or not)."""
        job = self._jobs.get(job_id)
        if job is not None:
            return job
        row = await self._db.fetchone("SELECT * FROM video_jobs WHERE id = ?", (job_id,))
        return None if row is None else VideoJob.from_row(row)

    async def save_progress(self, job: VideoJob) -> None:
        snapshot = job.snapshot()
        self._db.enqueue(lambda conn: _update(conn, snapshot))

    async def complete(self, job: VideoJob, cost_micros: int, units: int) -> None:
        # Settled first, with nothing that can fail between it and the write of its row;
        # the wallet also caps the charge at the hold (a zero hold after a restart).
        charge: LedgerEntry | None = None
        if job.hold is not None:
            charge = self._wallet.settle(job.hold, cost_micros, reference=job.id, request_id=job.id)
            cost_micros = job.hold.charged_micros
        job.cost_micros = cost_micros
        await self._finish(job, usage_record(job, status=200, units=units), charge)

    async def fail(self, job: VideoJob) -> None:
        self.release_hold(job)
        await self._finish(job, usage_record(job, status=502, units=0), None)

    async def _finish(self, job: VideoJob, record: UsageRecord, charge: LedgerEntry | None) -> None:
        """Charge, usage row and final state in one transaction (see the module docstring)."""
        del self._jobs[job.id]

        def write(conn: sqlite3.Connection) -> None:
            if charge is not None:
                insert_entry(conn, charge)
            insert_usage(conn, record)
            _update(conn, job)

        await self._db.write(write)
