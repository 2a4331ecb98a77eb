"""Video generation jobs: their holds, their upstream polling and their one settlement.

A job outlives the request that created it. ``POST /v1/videos`` places a wallet hold of
the job's exact quote and hands the job to ``VideoPoller.add``, which stores it in
``video_jobs`` (committed before the client hears of it). The poller then asks the
upstream (``GET {base}/videos/{id}``) every ``interval_s`` until the job is ``completed``
or ``failed``:

- completed: the hold is settled to the cost of the seconds generated (reference = the
  job id) and, in ONE transaction, the charge, the usage row and the job's final state
  are written. The ledger's unique charge reference and the usage table's unique
  request id make a second settlement impossible, and since the three rows commit
  together a crash leaves either all of them or none (then the job resumes).
- failed: the hold is released; a usage row (no charge) records the failure.

Holds live in memory and die with the process, so ``start`` re-places the hold of every
unfinished job from the table before polling resumes (its quote is stored with it).
Nothing of the prompt is stored: only model, size, seconds and prices.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any

import msgspec

from relay.errors import QuotaError
from relay.jobs.periodic import PeriodicTask
from relay.money.ledger import insert_entry
from relay.money.pricing import ModelPrice, video_cost_micros
from relay.money.wallet import Hold, LedgerEntry, Wallet
from relay.storage.db import Database
from relay.upstream.client import UpstreamFailure
from relay.upstream.providers import Provider
from relay.usage.log import UsageRecord, insert_usage

__all__ = ["UNFINISHED", "UpstreamVideo", "VideoJob", "VideoPoller", "decode_upstream_video"]

log = logging.getLogger("relay.videos")

UNFINISHED = ("queued", "in_progress")
POLL_INTERVAL_S = 2.0
# Consecutive failed polls (network errors, 5xx) after which a job is given up as failed.
MAX_POLL_FAILURES = 60
_ZERO = Decimal(0)


class _UpstreamError(msgspec.Struct):
    code: str | None = None


class UpstreamVideo(msgspec.Struct):
    """What relay reads of an upstream's video job."""

    id: str | None = None
    status: str | None = None
    progress: int | float | None = None
    seconds: int | str | None = None
    error: _UpstreamError | None = None


decode_upstream_video = msgspec.json.Decoder(UpstreamVideo).decode


@dataclass(slots=True)
class VideoJob:
    """One row of ``video_jobs``, plus its in-memory hold while it runs."""

    id: str
    account_id: str | None
    key_id: str | None
    model: str
    provider: str
    upstream_model: str
    upstream_id: str
    seconds: str
    size: str | None
    estimate_micros: int
    usd_per_second: str
    price_multiplier: str
    created_at_ms: int
    status: str = "queued"
    progress: int = 0
    cost_micros: int | None = None
    error_code: str | None = None
    updated_at_ms: int = 0
    completed_at_ms: int | None = None
    hold: Hold | None = field(default=None, repr=False)
    poll_failures: int = 0

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> VideoJob:
        return cls(**{name: row[name] for name in _COLUMNS})

    def row(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in _COLUMNS)

    @property
    def finished(self) -> bool:
        return self.status not in UNFINISHED

    def cost_of(self, seconds: Decimal) -> int:
        price = ModelPrice(
            model=self.model,
            input_usd_per_mtok=_ZERO,
            output_usd_per_mtok=_ZERO,
            cached_input_usd_per_mtok=_ZERO,
            cache_write_usd_per_mtok=_ZERO,
            usd_per_video_second=Decimal(self.usd_per_second),
        )
        multiplier = Decimal(self.price_multiplier)
        return video_cost_micros(price, seconds=seconds, multiplier=multiplier)


_COLUMNS = (
    "id",
    "account_id",
    "key_id",
    "model",
    "provider",
    "upstream_model",
    "upstream_id",
    "seconds",
    "size",
    "estimate_micros",
    "usd_per_second",
    "price_multiplier",
    "created_at_ms",
    "status",
    "progress",
    "cost_micros",
    "error_code",
    "updated_at_ms",
    "completed_at_ms",
)
_INSERT = (
    f"INSERT INTO video_jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
)
_UPDATE = (
    "UPDATE video_jobs SET status = ?, progress = ?, cost_micros = ?, error_code = ?, "
    "updated_at_ms = ?, completed_at_ms = ? WHERE id = ?"
)
_UNFINISHED_JOBS = (
    "SELECT * FROM video_jobs WHERE status IN ('queued', 'in_progress') "
    "AND id NOT IN (SELECT reference FROM ledger WHERE kind = 'charge') ORDER BY created_at_ms"
)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


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


def _reported_seconds(value: int | str | None) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        seconds = Decimal(str(value))
    except InvalidOperation:
        return None
    return seconds if seconds.is_finite() and seconds >= 0 else None


class VideoPoller:
    """Follows every unfinished job upstream; ``start``/``stop`` in the app's lifespan."""

    def __init__(
        self,
        db: Database,
        wallet: Wallet,
        providers: Mapping[str, Provider],
        *,
        interval_s: float = POLL_INTERVAL_S,
        max_poll_failures: int = MAX_POLL_FAILURES,
    ):
        self._db = db
        self._wallet = wallet
        self._providers = providers
        self._max_poll_failures = max_poll_failures
        self._jobs: dict[str, VideoJob] = {}
        self._periodic = PeriodicTask(
            "relay-video-poller", self.poll_once, interval_s=interval_s, log=log
        )
        # One round at a time: a job must never be judged by two overlapping polls.
        self._round = asyncio.Lock()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume every unfinished job (re-placing its hold), then poll in the background."""
        for row in await self._db.fetchall(_UNFINISHED_JOBS):
            job = VideoJob.from_row(row)
            job.hold = self.place_hold(job)
            self._jobs[job.id] = job
        if self._jobs:
            log.info("resumed %d unfinished video jobs", len(self._jobs))
        self._periodic.start()

    async def stop(self) -> None:
        """Stop polling; open holds die with the process and are re-placed at the next start."""
        await self._periodic.stop()

    # -- jobs -----------------------------------------------------------------------------

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

    async def add(self, job: VideoJob) -> None:
        """Store a new job (committed before returning) and follow it."""
        job.updated_at_ms = job.created_at_ms
        await self._db.write(lambda conn: conn.execute(_INSERT, job.row()))
        self._jobs[job.id] = job

    async def find(self, job_id: str) -> VideoJob | None:
        """A running job from memory, else the stored row (finished or not)."""
        job = self._jobs.get(job_id)
        if job is not None:
            return job
        row = await self._db.fetchone("SELECT * FROM video_jobs WHERE id = ?", (job_id,))
        return None if row is None else VideoJob.from_row(row)

    @property
    def running(self) -> int:
        return len(self._jobs)

    # -- polling --------------------------------------------------------------------------

    async def poll_once(self) -> None:
        """Ask the upstream about every running job, one after the other."""
        async with self._round:
            for job in list(self._jobs.values()):
                try:
                    await self._poll(job)
                except (sqlite3.Error, RuntimeError) as exc:  # storage trouble: next round
                    log.error("video job %s: %s", job.id, type(exc).__name__)

    async def _poll(self, job: VideoJob) -> None:
        provider = self._providers.get(job.provider)
        if provider is None:
            await self._failed_poll(job, "provider_removed")
            return
        try:
            status, raw = await self._fetch_status(provider, job.upstream_id)
        except UpstreamFailure:
            await self._failed_poll(job, "upstream_unreachable")
            return
        if status == 404:
            await self._fail(job, "upstream_job_not_found")
        elif status >= 400:
            await self._failed_poll(job, f"upstream_http_{status}")
        else:
            await self._follow(job, raw)

    async def _fetch_status(self, provider: Provider, upstream_id: str) -> tuple[int, bytes]:
        key = provider.pool.acquire()
        if key is None:
            raise UpstreamFailure("no usable key")
        try:
            response = await provider.client.send(
                "GET",
                provider.url(f"/videos/{upstream_id}"),
                headers=provider.headers(key),
                body=None,
                timeouts=provider.timeouts,
            )
            try:
                return response.status, await response.read()
            finally:
                await response.aclose()
        finally:
            provider.pool.release(key)

    async def _follow(self, job: VideoJob, raw: bytes) -> None:
        try:
            upstream = decode_upstream_video(raw)
        except msgspec.DecodeError:
            await self._failed_poll(job, "upstream_bad_answer")
            return
        job.poll_failures = 0
        if upstream.status == "completed":
            await self._complete(job, _reported_seconds(upstream.seconds))
        elif upstream.status in ("failed", "cancelled", "expired"):
            code = upstream.error.code if upstream.error and upstream.error.code else "video_failed"
            await self._fail(job, code)
        elif upstream.status in UNFINISHED:
            progress = max(0, min(int(upstream.progress or 0), 99))
            if (upstream.status, progress) != (job.status, job.progress):
                job.status, job.progress = upstream.status, progress
                job.updated_at_ms = _now_ms()
                snapshot = VideoJob(**{name: getattr(job, name) for name in _COLUMNS})
                self._db.enqueue(lambda conn: _update(conn, snapshot))

    async def _failed_poll(self, job: VideoJob, reason: str) -> None:
        job.poll_failures += 1
        if job.poll_failures >= self._max_poll_failures:
            await self._fail(job, reason)

    async def _complete(self, job: VideoJob, reported: Decimal | None) -> None:
        seconds = reported if reported is not None else Decimal(job.seconds)
        cost = job.cost_of(seconds)
        job.status, job.progress, job.cost_micros = "completed", 100, cost
        job.updated_at_ms = job.completed_at_ms = _now_ms()
        units = int(seconds.to_integral_value(ROUND_CEILING))
        record = self._usage_record(job, status=200, units=units)
        # Settled last, with nothing that can fail between it and the write of its row.
        charge: LedgerEntry | None = None
        if job.hold is not None:
            charge = self._wallet.settle(job.hold, cost, reference=job.id, request_id=job.id)
        await self._finish(job, record, charge)

    async def _fail(self, job: VideoJob, code: str) -> None:
        self.release_hold(job)
        job.status, job.error_code, job.cost_micros = "failed", code, 0
        job.updated_at_ms = job.completed_at_ms = _now_ms()
        await self._finish(job, self._usage_record(job, status=502, units=0), None)

    async def _finish(self, job: VideoJob, record: UsageRecord, charge: LedgerEntry | None) -> None:
        """Charge, usage row and final state in one transaction (see the module docstring)."""
        del self._jobs[job.id]

        def write(conn: sqlite3.Connection) -> None:
            if charge is not None:
                insert_entry(conn, charge)
            insert_usage(conn, record)
            _update(conn, job)

        await self._db.write(write)

    @staticmethod
    def _usage_record(job: VideoJob, *, status: int, units: int) -> UsageRecord:
        now = _now_ms()
        return UsageRecord(
            request_id=job.id,
            ts_ms=now,
            endpoint="videos",
            status=status,
            account_id=job.account_id,
            key_id=job.key_id,
            model=job.model,
            provider=job.provider,
            upstream_model=job.upstream_model,
            upstream_request_id=job.upstream_id,
            error_code=job.error_code,
            units=units,
            cost_micros=job.cost_micros or 0,
            latency_ms=now - job.created_at_ms,
        )
