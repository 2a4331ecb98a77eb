"""Where the alert outbox keeps its rows: the embedded SQLite file, or PostgreSQL.

``AlertOutbox`` (``relay.alerts.outbox``) decides what to raise, when to retry and when to
give up; an ``OutboxStore`` only stores. Two implementations: ``SqliteOutbox`` here (the
storage writer, one process) and ``PgOutbox`` in ``relay.alerts.pg_outbox`` (shared by every
instance: one alert per re-arm interval across them, delivered by whichever claims it).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import NamedTuple, Protocol

from relay.storage.db import Database, WriteQueueFull

__all__ = [
    "PRUNE_SENT",
    "DueAlert",
    "OutboxFull",
    "OutboxRow",
    "OutboxStore",
    "SqliteOutbox",
]


class OutboxFull(RuntimeError):
    """The row could not be queued (the write queue is full): the alert is dropped."""


class OutboxRow(NamedTuple):
    sink_index: int
    sink_name: str
    event: str
    subject: str
    payload: str
    created_at_ms: int
    # The sink's re-arm interval: a shared store refuses the row when another instance
    # raised the same alert for the same sink within it.
    rearm_ms: int


class DueAlert(NamedTuple):
    id: int
    sink_index: int
    payload: str
    attempts: int


class OutboxStore(Protocol):
    async def last_raised(self) -> list[tuple[int, str, str, int]]:
        """(sink_index, event, subject, newest created_at_ms) of every alert ever queued."""
        ...

    def enqueue(self, row: OutboxRow) -> None:
        """Queue ``row`` without waiting (raises ``OutboxFull``)."""
        ...

    async def flush(self) -> None:
        """Wait until every row enqueued so far is stored."""
        ...

    async def claim_next(self, now_ms: int) -> DueAlert | None:
        """The oldest undelivered row due at ``now_ms``, for this instance to deliver."""
        ...

    async def record_delivered(self, row_id: int, attempts: int, now_ms: int) -> None: ...

    async def record_retry(
        self, row_id: int, attempts: int, error: str, next_attempt_at_ms: int
    ) -> None: ...

    async def record_given_up(
        self, row_id: int, attempts: int, error: str, now_ms: int
    ) -> None: ...

    async def prune_sent(self, before_ms: int, limit: int) -> int:
        """Delete at most ``limit`` rows raised before ``before_ms`` that are done with
        (delivered or given up), oldest first; returns how many. Never an undelivered row."""
        ...


# Oldest first by id (ids grow with time): a batch reads the table's head, where old rows are.
PRUNE_SENT = (
    "DELETE FROM alert_outbox WHERE id IN (SELECT id FROM alert_outbox"
    " WHERE (delivered_at_ms IS NOT NULL OR failed_at_ms IS NOT NULL)"
    " AND created_at_ms < {before} ORDER BY id LIMIT {limit})"
)
_PRUNE_SENT = PRUNE_SENT.format(before="?", limit="?")

_INSERT = (
    "INSERT INTO alert_outbox (sink_index, sink_name, event, subject, payload, "
    "created_at_ms, next_attempt_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


class SqliteOutbox:
    """The embedded store: rows written by the storage writer (fire-and-forget)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def last_raised(self) -> list[tuple[int, str, str, int]]:
        rows = await self._db.fetchall(
            "SELECT sink_index, event, subject, MAX(created_at_ms) AS at FROM alert_outbox "
            "GROUP BY sink_index, event, subject"
        )
        return [(r["sink_index"], r["event"], r["subject"], r["at"]) for r in rows]

    def enqueue(self, row: OutboxRow) -> None:
        # One process: the outbox's in-memory re-arm clock already deduplicates.
        values = (*row[:6], row.created_at_ms)
        try:
            self._db.enqueue(_inserter(values))
        except WriteQueueFull:
            raise OutboxFull("the write queue is full") from None

    async def flush(self) -> None:
        await self._db.flush()

    async def claim_next(self, now_ms: int) -> DueAlert | None:
        # One process, one delivery pass at a time (the outbox's lock): reading is claiming.
        row = await self._db.fetchone(
            "SELECT id, sink_index, payload, attempts FROM alert_outbox "
            "WHERE delivered_at_ms IS NULL AND failed_at_ms IS NULL AND next_attempt_at_ms <= ? "
            "ORDER BY id LIMIT 1",
            (now_ms,),
        )
        return None if row is None else DueAlert(row[0], row[1], row[2], row[3])

    async def record_delivered(self, row_id: int, attempts: int, now_ms: int) -> None:
        await self._db.execute_write(
            "UPDATE alert_outbox SET delivered_at_ms = ?, attempts = ? WHERE id = ?",
            (now_ms, attempts, row_id),
        )

    async def record_retry(
        self, row_id: int, attempts: int, error: str, next_attempt_at_ms: int
    ) -> None:
        await self._db.execute_write(
            "UPDATE alert_outbox SET next_attempt_at_ms = ?, attempts = ?, last_error = ? "
            "WHERE id = ?",
            (next_attempt_at_ms, attempts, error, row_id),
        )

    async def record_given_up(self, row_id: int, attempts: int, error: str, now_ms: int) -> None:
        await self._db.execute_write(
            "UPDATE alert_outbox SET failed_at_ms = ?, attempts = ?, last_error = ? WHERE id = ?",
            (now_ms, attempts, error, row_id),
        )

    async def prune_sent(self, before_ms: int, limit: int) -> int:
        def delete_batch(conn: sqlite3.Connection) -> int:
            return conn.execute(_PRUNE_SENT, (before_ms, limit)).rowcount

        return await self._db.write(delete_batch)


def _inserter(values: tuple[object, ...]) -> Callable[[sqlite3.Connection], None]:
    def insert(conn: sqlite3.Connection) -> None:
        conn.execute(_INSERT, values)

    return insert
