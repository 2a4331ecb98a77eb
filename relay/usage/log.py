"""Usage records: one metadata-only row per request, group-committed by the writer.

A record never holds prompt or response content (docs/architecture.md §5): only who, which model
and provider, tokens, cost, status and timings.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable

import msgspec

from relay.money.ledger import insert_entry
from relay.money.wallet import LedgerEntry
from relay.storage.db import Database, WriteQueueFull
from relay.usage.rollup import DailyCount, daily_count

__all__ = ["UsageLog", "UsageRecord", "insert_usage", "insert_usage_row"]

log = logging.getLogger("relay.usage")


class UsageRecord(msgspec.Struct):
    request_id: str
    ts_ms: int
    endpoint: str
    status: int
    account_id: str | None = None
    key_id: str | None = None
    model: str | None = None
    provider: str | None = None
    upstream_model: str | None = None
    upstream_request_id: str | None = None
    error_code: str | None = None
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    units: int = 0
    cost_micros: int = 0
    usage_estimated: bool = False
    latency_ms: int | None = None
    ttfb_ms: int | None = None


_COLUMNS = tuple(UsageRecord.__struct_fields__)
_INSERT = f"INSERT INTO usage ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"


def insert_usage_row(conn: sqlite3.Connection, record: UsageRecord) -> DailyCount:
    """The usage row; its day's count (console charts) is returned for the caller to add.

    Returned by a queued write, the writer adds it with the batch's other counts before
    the batch commits (``relay.storage.batch.PerBatch``); in the same transaction either way.
    """
    conn.execute(_INSERT, msgspec.structs.astuple(record))
    return daily_count(
        record.account_id,
        record.ts_ms,
        record.model,
        record.status,
        record.cost_micros,
        record.prompt_tokens,
        record.completion_tokens,
    )


def insert_usage(conn: sqlite3.Connection, record: UsageRecord) -> None:
    """The usage row and its day's rollup (console charts), counted at once."""
    DailyCount.apply_batch(conn, [insert_usage_row(conn, record)])


def _write_usage(
    conn: sqlite3.Connection, record: UsageRecord, charge: LedgerEntry | None
) -> DailyCount:
    if charge is not None:
        insert_entry(conn, charge)
    return insert_usage_row(conn, record)


class UsageLog:
    """Queues usage rows (with their charge, in one transaction) for the single writer."""

    def __init__(self, db: Database, observer: Callable[[UsageRecord], None] | None = None):
        self._db = db
        self._overflow: set[asyncio.Task[None]] = set()
        self.overflowed = 0  # rows that had to wait for room, for tests and metrics
        # Sees every record as it is queued (the request metrics); must be cheap, never raise.
        self._observer = observer

    @property
    def overflow_waiting(self) -> int:
        return len(self._overflow)

    def record(self, record: UsageRecord, charge: LedgerEntry | None = None) -> None:
        """Queue the row and its charge; committed together within one flush interval.

        Never drops: the gate stops admitting well before the queue is full, and if it
        is full anyway the write waits for room in a task of its own. That overflow is
        bounded by the requests in flight (the gate admits no new ones meanwhile: its
        backlog limit is half the queue) and is counted and logged.
        """

        if self._observer is not None:
            self._observer(record)

        def write(conn: sqlite3.Connection) -> DailyCount:
            return _write_usage(conn, record, charge)

        try:
            self._db.enqueue(write)
        except WriteQueueFull:
            self.overflowed += 1
            if self.overflowed == 1 or self.overflowed % 1000 == 0:
                log.warning(
                    "write queue full: %d usage rows waiting for room (%d so far)",
                    len(self._overflow) + 1,
                    self.overflowed,
                )
            task = asyncio.get_running_loop().create_task(self._db.enqueue_wait(write))
            self._overflow.add(task)
            task.add_done_callback(self._overflow.discard)
