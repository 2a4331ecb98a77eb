"""Refusals under back-pressure, counted in memory and written as one row per key.

While the database cannot keep up, relay refuses billable requests (503
``storage_unavailable``). Writing one usage row per refusal would feed the very backlog
that caused it, so a client that ignores ``retry-after`` would keep relay refusing long
after the stall ended. Instead each refusal bumps a counter per (account, key, endpoint,
model, code), and every ``interval_s`` each counter becomes ONE usage row whose ``units``
is the number of refusals it stands for. Memory is bounded by the number of distinct
keys; a flush the queue cannot take keeps its counts for the next interval. The app runs
``flush`` every ``interval_s`` (a ``PeriodicTask``) and once more at shutdown.

Where the rows go is a ``RefusalSink``: the storage writer's queue (``database_sink``,
embedded) or, in cluster mode, the settler's next batch to PostgreSQL
(``relay.cluster.runtime.refusal_sink``). Either takes a row without awaiting anything,
so a refusal never waits on storage.
"""

from __future__ import annotations

import functools
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable
from typing import NamedTuple

from relay.storage.db import Database, WriteQueueFull
from relay.usage.log import UsageRecord, insert_usage_row
from relay.usage.rollup import DailyCount

__all__ = ["RefusalCounter", "RefusalSink", "database_sink"]

log = logging.getLogger("relay.usage")
DEFAULT_INTERVAL_S = 10.0


class _Who(NamedTuple):
    account_id: str | None
    key_id: str | None
    endpoint: str
    model: str | None
    status: int
    code: str


# Takes one aggregated row without awaiting; False when it cannot now (the count is kept).
RefusalSink = Callable[[UsageRecord], bool]


def _insert(record: UsageRecord, conn: sqlite3.Connection) -> DailyCount:
    # Counted into usage_daily with the batch's other rows (relay.storage.batch.PerBatch).
    return insert_usage_row(conn, record)


def database_sink(db: Database) -> RefusalSink:
    """Rows to the embedded writer's queue; a full queue refuses them."""

    def queue(record: UsageRecord) -> bool:
        try:
            db.enqueue(functools.partial(_insert, record))
        except WriteQueueFull:
            return False
        return True

    return queue


class RefusalCounter:
    def __init__(self, sink: RefusalSink, *, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self._sink = sink
        self.interval_s = interval_s
        self._counts: dict[_Who, int] = {}
        self._prefix = f"refused_{secrets.token_hex(4)}_"
        self._rows = 0
        self.refused = 0  # refusals counted since start, for tests and metrics

    def count(
        self,
        *,
        account_id: str | None,
        key_id: str | None,
        endpoint: str,
        model: str | None,
        status: int,
        code: str,
    ) -> None:
        who = _Who(account_id, key_id, endpoint, model, status, code)
        self._counts[who] = self._counts.get(who, 0) + 1
        self.refused += 1

    def flush(self) -> int:
        """Queue one row per counter; returns the rows queued. Never raises on a full queue."""
        counts, self._counts = self._counts, {}
        now_ms = time.time_ns() // 1_000_000
        queued = 0
        for who, n in counts.items():
            self._rows += 1
            record = UsageRecord(
                request_id=f"{self._prefix}{self._rows:08x}",
                ts_ms=now_ms,
                endpoint=who.endpoint,
                status=who.status,
                account_id=who.account_id,
                key_id=who.key_id,
                model=who.model,
                error_code=who.code,
                units=n,
            )
            if not self._sink(record):  # keep the count: it is written at the next interval
                self._counts[who] = self._counts.get(who, 0) + n
                continue
            queued += 1
        if queued:
            log.warning("recorded %d aggregated refusal rows (storage back-pressure)", queued)
        return queued
