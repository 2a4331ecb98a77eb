"""The alert outbox on PostgreSQL: one outbox for every instance (``relay.alerts.outbox_store``).

Embedded, the outbox is a table of the instance's own SQLite file. In cluster mode that file
is a scratch file: an alert queued there dies with the instance, and N instances that see
the same upstream cool down would each send the same alert. Here:

- a row is inserted only when no instance queued the same alert (sink, event, subject)
  within the sink's re-arm interval, checked under one transaction advisory lock so two
  instances raising it at the same moment queue it once;
- every instance delivers, one row at a time, claiming it by moving its next attempt a
  lease ahead (``FOR UPDATE SKIP LOCKED``): a row is delivered by one instance, and a row
  whose deliverer died is due again when the lease ends (at least once, as embedded);
- ``enqueue`` never waits for PostgreSQL: the insert runs in a task (bounded in number:
  past the bound the alert is dropped with a warning, as a full write queue drops it
  embedded).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from relay.alerts.outbox_store import PRUNE_SENT, DueAlert, OutboxFull, OutboxRow

__all__ = ["ALERT_LOCK", "PgOutbox"]

log = logging.getLogger("relay.alerts")
ALERT_LOCK = 0x72656C6179 + 0xA1
# Longer than one delivery may take (webhooks time out after 10 s, SMTP after [email]
# timeout_s, 30 s by default): a row claimed by an instance that died is due again then.
CLAIM_LEASE_MS = 120_000
_MAX_PENDING = 256

_INSERT = """
INSERT INTO alert_outbox (sink_index, sink_name, event, subject, payload, created_at_ms,
                          next_attempt_at_ms)
SELECT $1::bigint, $2::text, $3::text, $4::text, $5::text, $6::bigint, $6::bigint
WHERE NOT EXISTS (
    SELECT 1 FROM alert_outbox
    WHERE sink_index = $1 AND event = $3 AND subject = $4 AND created_at_ms > $6 - $7::bigint
)
"""

_CLAIM = """
UPDATE alert_outbox SET next_attempt_at_ms = $1 + $2
WHERE id = (
    SELECT id FROM alert_outbox
    WHERE delivered_at_ms IS NULL AND failed_at_ms IS NULL AND next_attempt_at_ms <= $1
    ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
)
RETURNING id, sink_index, payload, attempts
"""


_PRUNE_SENT = (
    f"WITH gone AS ({PRUNE_SENT.format(before='$1', limit='$2')} RETURNING 1)"
    " SELECT count(*) FROM gone"
)


class PgOutbox:
    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._pending: set[asyncio.Task[None]] = set()

    async def last_raised(self) -> list[tuple[int, str, str, int]]:
        rows = await self._pool.fetch(
            "SELECT sink_index, event, subject, MAX(created_at_ms) AS at FROM alert_outbox"
            " GROUP BY sink_index, event, subject"
        )
        return [(r["sink_index"], r["event"], r["subject"], r["at"]) for r in rows]

    def enqueue(self, row: OutboxRow) -> None:
        if len(self._pending) >= _MAX_PENDING:
            raise OutboxFull(f"{_MAX_PENDING} alerts are already on their way to PostgreSQL")
        task = asyncio.get_running_loop().create_task(self._insert(row))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _insert(self, row: OutboxRow) -> None:
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", ALERT_LOCK)
                await conn.execute(_INSERT, *row)
        except Exception as exc:  # named reason: a lost alert is logged, never raised
            log.warning(
                "alert %s for %s not queued: %s: %s",
                row.event,
                row.subject,
                type(exc).__name__,
                exc,
            )

    async def flush(self) -> None:
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def claim_next(self, now_ms: int) -> DueAlert | None:
        row = await self._pool.fetchrow(_CLAIM, now_ms, CLAIM_LEASE_MS)
        if row is None:
            return None
        return DueAlert(row["id"], row["sink_index"], row["payload"], row["attempts"])

    async def record_delivered(self, row_id: int, attempts: int, now_ms: int) -> None:
        await self._pool.execute(
            "UPDATE alert_outbox SET delivered_at_ms = $1, attempts = $2 WHERE id = $3",
            now_ms,
            attempts,
            row_id,
        )

    async def record_retry(
        self, row_id: int, attempts: int, error: str, next_attempt_at_ms: int
    ) -> None:
        await self._pool.execute(
            "UPDATE alert_outbox SET next_attempt_at_ms = $1, attempts = $2, last_error = $3"
            " WHERE id = $4",
            next_attempt_at_ms,
            attempts,
            error,
            row_id,
        )

    async def record_given_up(self, row_id: int, attempts: int, error: str, now_ms: int) -> None:
        await self._pool.execute(
            "UPDATE alert_outbox SET failed_at_ms = $1, attempts = $2, last_error = $3"
            " WHERE id = $4",
            now_ms,
            attempts,
            error,
            row_id,
        )

    async def prune_sent(self, before_ms: int, limit: int) -> int:
        return int(await self._pool.fetchval(_PRUNE_SENT, before_ms, limit))
