"""Video generation jobs: their holds, their upstream polling and their one settlement.

A job outlives the request that created it. ``POST /v1/videos`` places a wallet hold of
the job's exact quote and hands the job to ``VideoPoller.add``, which stores it in
``video_jobs`` (committed before the client hears of it). The poller then asks the
upstream (``GET {base}/videos/{id}``) every ``interval_s`` until the job is ``completed``
or ``failed``:

- completed: the hold is settled to the cost of the seconds generated, never more than
  the job's quote (reference = the job id) and, in ONE transaction, the charge, the usage
  row and the job's final state are written. The ledger's unique charge reference and
  the usage table's unique request id make a second settlement impossible, and since the
  three rows commit together a crash leaves either all of them or none (then the job resumes).
- failed: the hold is released; a usage row (no charge) records the failure.

Where jobs, holds and charges are kept is the ``VideoStore`` seam: embedded
(``relay.jobs.video_store``: SQLite and the in-memory wallet, whose holds die with the
process, so ``start`` re-places the hold of every unfinished job from the table) or
PostgreSQL (``relay.cluster.pg_videos``: holds owned by the cluster, polled by the
elected job runner). The poller here is the same for both: it follows the upstream and
decides what a job costs; the store charges it once.
Nothing of the prompt is stored: only model, size, seconds and prices.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Annotated, Any, Protocol

import msgspec
from msgspec import Meta

from relay.admission.ticket import Ticket
from relay.jobs.periodic import PeriodicTask
from relay.money.pricing import ModelPrice, video_cost_micros
from relay.money.wallet import Hold
from relay.upstream.client import UpstreamFailure
from relay.upstream.providers import Provider
from relay.usage.log import UsageRecord

__all__ = [
    "COLUMNS",
    "UNFINISHED",
    "UpstreamVideo",
    "VideoJob",
    "VideoPoller",
    "VideoStore",
    "decode_upstream_video",
    "usage_record",
]

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
    progress: Annotated[int, Meta(ge=0, le=100)] | Annotated[float, Meta(ge=0, le=100)] | None = (
        None
    )
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
    hold: Hold | None = field(default=None, repr=False)  # embedded only (the wallet's)
    poll_failures: int = 0

    @classmethod
    def from_row(cls, row: Any) -> VideoJob:  # a sqlite3.Row or an asyncpg Record
        return cls(**{name: row[name] for name in COLUMNS})

    def row(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in COLUMNS)

    def snapshot(self) -> VideoJob:
        """The stored columns only (no hold): what a queued write should see."""
        return VideoJob(**{name: getattr(self, name) for name in COLUMNS})

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


COLUMNS = (
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


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def usage_record(job: VideoJob, *, status: int, units: int) -> UsageRecord:
    """The usage row of a job that ended (its ``cost_micros`` already what was charged)."""
    now = now_ms()
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


def _reported_seconds(value: int | str | None) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        seconds = Decimal(str(value))
    except InvalidOperation:
        return None
    return seconds if seconds.is_finite() and seconds >= 0 else None


class VideoStore(Protocol):
    """Where jobs, their holds and their one charge live (embedded or PostgreSQL).

    ``complete`` and ``fail`` end a job exactly once: its charge (or released hold), its
    usage row and its final state are written together, and a job already ended is left
    as it is."""

    errors: tuple[type[BaseException], ...]  # storage trouble: the job waits a round

    @property
    def count(self) -> int:
        """Jobs this process follows."""
        ...

    async def resume(self) -> int:
        """At start: take up the unfinished jobs (with their holds); how many."""
        ...

    async def running(self) -> list[VideoJob]:
        """The jobs to poll this round."""
        ...

    async def hand_over(self, job: VideoJob, ticket: Ticket) -> None:
        """Move the request's hold to the job and store the job (committed on return)."""
        ...

    async def find(self, job_id: str) -> VideoJob | None: ...

    async def save_progress(self, job: VideoJob) -> None: ...

    async def complete(self, job: VideoJob, cost_micros: int, units: int) -> None:
        """Charge at most ``cost_micros`` (sets ``job.cost_micros`` to the charge)."""
        ...

    async def fail(self, job: VideoJob) -> None:
        """Release the job's hold, charging nothing."""
        ...


class VideoPoller:
    """Follows every unfinished job upstream; ``start``/``stop`` in the app's lifespan."""

    def __init__(
        self,
        store: VideoStore,
        providers: Mapping[str, Provider],
        *,
        interval_s: float = POLL_INTERVAL_S,
        max_poll_failures: int = MAX_POLL_FAILURES,
    ):
        self.store = store
        self._providers = providers
        self._max_poll_failures = max_poll_failures
        self._periodic = PeriodicTask(
            "relay-video-poller", self.poll_once, interval_s=interval_s, log=log
        )
        # One round at a time: a job must never be judged by two overlapping polls.
        self._round = asyncio.Lock()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume every unfinished job (re-placing its hold), then poll in the background."""
        resumed = await self.store.resume()
        if resumed:
            log.info("resumed %d unfinished video jobs", resumed)
        self._periodic.start()

    async def stop(self) -> None:
        """Stop polling; what a round left undone is the next start's (or runner's) to do."""
        await self._periodic.stop()

    # -- jobs -----------------------------------------------------------------------------

    async def hand_over(self, job: VideoJob, ticket: Ticket) -> None:
        await self.store.hand_over(job, ticket)

    async def find(self, job_id: str) -> VideoJob | None:
        return await self.store.find(job_id)

    @property
    def running(self) -> int:
        return self.store.count

    # -- polling --------------------------------------------------------------------------

    async def poll_once(self) -> None:
        """Ask the upstream about every running job, one after the other."""
        async with self._round:
            for job in await self.store.running():
                try:
                    await self._poll(job)
                except self.store.errors as exc:  # storage trouble: next round
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
                job.updated_at_ms = now_ms()
                await self.store.save_progress(job)

    async def _failed_poll(self, job: VideoJob, reason: str) -> None:
        job.poll_failures += 1
        if job.poll_failures >= self._max_poll_failures:
            await self._fail(job, reason)

    async def _complete(self, job: VideoJob, reported: Decimal | None) -> None:
        asked = Decimal(job.seconds)
        # Never more than was asked, quoted and held: an upstream that renders (or
        # reports) more seconds is an overrun the operator sees in the log, not the client.
        seconds = asked if reported is None else min(reported, asked)
        if reported is not None and reported > asked:
            log.warning(
                "video job %s: upstream reported %s s for %s s asked; billed %s s",
                job.id,
                reported,
                asked,
                asked,
            )
        cost = min(job.cost_of(seconds), job.estimate_micros)
        job.status, job.progress = "completed", 100
        job.updated_at_ms = job.completed_at_ms = now_ms()
        units = int(seconds.to_integral_value(ROUND_CEILING))
        await self.store.complete(job, cost, units)

    async def _fail(self, job: VideoJob, code: str) -> None:
        job.status, job.error_code, job.cost_micros = "failed", code, 0
        job.updated_at_ms = job.completed_at_ms = now_ms()
        await self.store.fail(job)
