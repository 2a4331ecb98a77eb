"""The alert outbox: deduplicated, durable, delivered with retries, never in a request's way.

``raise_alert`` is synchronous and cheap: it checks the re-arm interval in memory and
queues one outbox row per matching sink in its store (fire-and-forget): the storage writer
embedded, PostgreSQL in cluster mode (``relay.alerts.outbox_store``), where the re-arm
interval holds across instances too.
``run`` delivers due rows in the background and records each outcome; a failed delivery
is retried with exponential backoff and given up after ``MAX_ATTEMPTS`` (the row stays,
with its last error). After a restart the undelivered rows are delivered, and the re-arm
clock resumes from the rows' times, so a restart does not repeat an alert.

Storage alerts cannot wait for the storage they are about: ``storage_unavailable`` and
``storage_recovered`` are delivered straight from memory (retried a few times), and are
what the storage layer calls through ``notify_storage``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec

from relay.alerts.outbox_store import OutboxFull, OutboxRow, OutboxStore
from relay.alerts.sinks import DeliveryError, deliver
from relay.config import AlertConfig, AlertEvent, Config

__all__ = ["MAX_ATTEMPTS", "PRUNE_AFTER_MIN_MS", "AlertOutbox"]

log = logging.getLogger("relay.alerts")
MAX_ATTEMPTS = 10
_BATCH = 20
_BACKOFF_BASE_MS = 5_000
_BACKOFF_MAX_MS = 3_600_000
_DIRECT_ATTEMPTS = 3
_CLOSE_FLUSH_S = 5.0
_ENCODER = msgspec.json.Encoder()
# Sent rows stay at least this long (the operator's recent history), longer when a sink's
# re-arm interval is longer: the re-arm check reads the newest row of an alert within it.
PRUNE_AFTER_MIN_MS = 86_400_000
PRUNE_BATCH_ROWS = 5000


def _iso(ms: int) -> str:
    moment = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class AlertOutbox:
    def __init__(
        self,
        store: OutboxStore,
        config: Callable[[], Config],
        *,
        http: httpx.AsyncClient | None = None,
        clock_ms: Callable[[], int] = _now_ms,
        poll_s: float = 1.0,
    ) -> None:
        self._store = store
        self._config = config  # read at each use: a reload may change the sinks
        # Built on the first delivery: an httpx client loads the CA store (~45 ms and
        # ~1.7 MB at start-up), and most relays configure no webhook or Slack sink.
        self._http = http
        self._clock_ms = clock_ms
        self._poll_s = poll_s
        self._last_sent: dict[tuple[int, str, str], int] = {}
        self._wake = asyncio.Event()
        # One delivery pass at a time: two passes would both send a row read before either
        # recorded its outcome.
        self._delivering = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._direct: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for index, event, subject, at in await self._store.last_raised():
            self._last_sent[(index, event, subject)] = at
        self._task = asyncio.get_running_loop().create_task(self._run(), name="relay-alerts")

    async def aclose(self, *, store_failing: Callable[[], bool] = lambda: False) -> None:
        """Stop delivering; wait (bounded) until alerts raised just before shutdown are
        stored, unless ``store_failing()``: a storage known not to commit would only hold
        shutdown for ``_CLOSE_FLUSH_S`` (the rows stay queued to the database, whose own
        close still tries them)."""
        for task in [self._task, *self._direct]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if not store_failing():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_FLUSH_S):
                    await self._store.flush()
        if self._http is not None:
            await self._http.aclose()

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=10.0)
        return self._http

    # -- raising ----------------------------------------------------------------------

    def _sinks_for(self, event: AlertEvent) -> list[tuple[int, AlertConfig]]:
        return [(i, s) for i, s in enumerate(self._config().alerts) if event in s.events]

    def _due(self, index: int, sink: AlertConfig, event: str, subject: str, now: int) -> bool:
        last = self._last_sent.get((index, event, subject))
        return last is None or now - last >= sink.rearm_s * 1000

    def raise_alert(
        self, event: AlertEvent, subject: str, message: str, detail: dict[str, Any] | None = None
    ) -> int:
        """Queue the alert for every sink that wants it and is re-armed; returns how many.

        A shared store (cluster mode) may still drop a row another instance queued first."""
        now = self._clock_ms()
        alert = {
            "event": event,
            "subject": subject,
            "message": message,
            "detail": detail or {},
            "created_at": _iso(now),
        }
        payload = _ENCODER.encode(alert).decode()
        queued = 0
        for index, sink in self._sinks_for(event):
            if not self._due(index, sink, event, subject, now):
                continue
            rearm_ms = int(sink.rearm_s * 1000)
            row = OutboxRow(index, sink.name or sink.sink, event, subject, payload, now, rearm_ms)
            try:
                self._store.enqueue(row)
            except OutboxFull as exc:
                log.warning("alert %s for %s not queued: %s", event, subject, exc)
                continue
            self._last_sent[(index, event, subject)] = now
            queued += 1
        if queued:
            log.info("alert %s (%s): %s", event, subject, message)
            self._wake.set()
        return queued

    def notify_storage(self, available: bool, reason: str = "") -> None:
        """For the storage layer: storage went down (or came back). Delivered from memory."""
        event: AlertEvent = "storage_recovered" if available else "storage_unavailable"
        now = self._clock_ms()
        message = "storage recovered" if available else f"storage unavailable: {reason}"
        alert = {
            "event": event,
            "subject": "storage",
            "message": message,
            "detail": {"reason": reason} if reason else {},
            "created_at": _iso(now),
        }
        for index, sink in self._sinks_for(event):
            if not self._due(index, sink, event, "storage", now):
                continue
            self._last_sent[(index, event, "storage")] = now
            task = asyncio.get_running_loop().create_task(self._deliver_direct(sink, alert))
            self._direct.add(task)
            task.add_done_callback(self._direct.discard)

    async def _deliver_direct(self, sink: AlertConfig, alert: dict[str, Any]) -> None:
        for attempt in range(_DIRECT_ATTEMPTS):
            try:
                await deliver(sink, alert, self._client(), self._config().email)
                return
            except DeliveryError as exc:
                log.warning("storage alert to %s failed: %s", sink.name or sink.sink, exc)
                await asyncio.sleep(2**attempt)

    # -- pruning ----------------------------------------------------------------------

    def prune_horizon_ms(self, now_ms: int) -> int:
        """Sent rows raised before this are no longer read: the re-arm check (``_due``, its
        restart seed ``last_raised``, and the shared store's insert) only needs an alert's
        rows within its sink's ``rearm_s``; past the longest one, a row changes nothing."""
        longest = max((int(sink.rearm_s * 1000) for sink in self._config().alerts), default=0)
        return now_ms - max(longest, PRUNE_AFTER_MIN_MS)

    async def prune(self, now_ms: int, batch_rows: int = PRUNE_BATCH_ROWS) -> int:
        """Delete sent rows past ``prune_horizon_ms`` in batches of ``batch_rows`` (each a
        short transaction); returns how many. Undelivered rows stay whatever their age."""
        before = self.prune_horizon_ms(now_ms)
        pruned = 0
        while True:
            deleted = await self._store.prune_sent(before, batch_rows)
            pruned += deleted
            if deleted < batch_rows:
                return pruned
            await asyncio.sleep(0)  # let other writes in between batches

    # -- delivering -------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                await self.deliver_due()
            except Exception as exc:  # storage trouble, of either engine: try again later
                log.warning("alert delivery paused: %s: %s", type(exc).__name__, exc)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_s):
                    await self._wake.wait()

    async def deliver_due(self) -> int:
        """Deliver every due row once; returns how many were delivered."""
        async with self._delivering:
            return await self._deliver_due()

    async def _deliver_due(self) -> int:
        await self._store.flush()  # rows queued a moment ago are due too
        now = self._clock_ms()
        sinks = self._config().alerts
        delivered = 0
        for _ in range(_BATCH):  # one row claimed at a time: a shared store's claim is short
            row = await self._store.claim_next(now)
            if row is None:
                break
            outcome = await self._attempt(sinks, row.sink_index, row.payload)
            await self._record(row.id, row.attempts + 1, outcome)
            delivered += outcome is None
        return delivered

    async def _attempt(self, sinks: list[AlertConfig], index: int, payload: str) -> str | None:
        if index >= len(sinks):
            return "the sink is no longer configured"
        try:
            await deliver(
                sinks[index], msgspec.json.decode(payload), self._client(), self._config().email
            )
        except DeliveryError as exc:
            return str(exc)[:500]
        return None

    async def _record(self, row_id: int, attempts: int, error: str | None) -> None:
        now = self._clock_ms()
        if error is None:
            await self._store.record_delivered(row_id, attempts, now)
        elif attempts >= MAX_ATTEMPTS:
            log.error("alert %d given up after %d attempts: %s", row_id, attempts, error)
            await self._store.record_given_up(row_id, attempts, error, now)
        else:
            backoff = min(_BACKOFF_MAX_MS, _BACKOFF_BASE_MS * 2 ** (attempts - 1))
            await self._store.record_retry(row_id, attempts, error, now + backoff)
