"""Usage records: one metadata-only row per request, group-committed by the writer.

A record never holds prompt or response content (docs/architecture.md §5): only who, which model
and provider, tokens, cost, status and timings.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence

import msgspec
from msgspec.structs import astuple

from relay.money.ledger import LEDGER_INSERT_HEAD
from relay.money.wallet import LedgerEntry
from relay.storage.batch import PerBatch
from relay.storage.db import Database, WriteQueueFull
from relay.storage.multirow import insert_rows
from relay.usage.rollup import DailyCount, daily_count

__all__ = ["UsageLog", "UsageRecord", "UsageWrite", "insert_usage", "insert_usage_row"]

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
_INSERT_HEAD = f"INSERT INTO usage ({', '.join(_COLUMNS)})"
_INSERT = f"{_INSERT_HEAD} VALUES ({', '.join('?' for _ in _COLUMNS)})"


def insert_usage_row(conn: sqlite3.Connection, record: UsageRecord) -> DailyCount:
    """The usage row; its day's count (console charts) is returned for the caller to add.

    Returned by a queued write, the writer adds it with the batch's other counts before
    the batch commits (``relay.storage.batch.PerBatch``); in the same transaction either way.
    """
    conn.execute(_INSERT, astuple(record))
    return _daily_count(record)


def _daily_count(record: UsageRecord) -> DailyCount:
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


class UsageWrite(PerBatch):
    """A queued usage row with its charge: the writer inserts a batch's rows together.

    Called by the writer with its connection, it returns itself as its ``PerBatch``
    share, and ``apply_batch`` inserts every charge of the batch, then every row, then
    their daily counts, each in a few multi-row statements (``relay.storage.multirow``:
    why the number of statements, not their size, bounds the writer). Replayed with
    savepoints after an item's failure, each write applies alone in its own savepoint,
    exactly as before. A batch's charges thus take their ledger ids after the batch's
    other writes (credits, adjustments), within the same flush interval and transaction.
    """

    __slots__ = ("charge", "record")

    def __init__(self, record: UsageRecord, charge: LedgerEntry | None) -> None:
        self.record = record
        self.charge = charge

    def __call__(self, conn: sqlite3.Connection) -> UsageWrite:
        return self

    @classmethod
    def apply_batch(cls, conn: sqlite3.Connection, shares: Sequence[UsageWrite]) -> None:
        charges = [astuple(s.charge) for s in shares if s.charge is not None]
        insert_rows(conn, LEDGER_INSERT_HEAD, charges)
        insert_rows(conn, _INSERT_HEAD, [astuple(s.record) for s in shares])
        DailyCount.apply_batch(conn, [_daily_count(s.record) for s in shares])


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

        write = UsageWrite(record, charge)
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
