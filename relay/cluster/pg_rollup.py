"""The daily rollup on PostgreSQL: usage rows summed into ``usage_daily`` by the job runner.

Embedded, the writer adds each usage row to its day's totals in the row's own transaction
(``relay.usage.rollup``). In cluster mode N instances insert usage rows (the settlers'
batches, the video jobs' completions) and doing the same there would make every batch
update the same few hot ``usage_daily`` rows across instances. Instead the elected job
runner (``relay.cluster.job_runner``) sums the new rows in batches, with the embedded
rule: per (account, UTC day, model), ``''`` for a missing account or model, one request
per row, an error for a status of 400 or more.

**Exactly once, by construction.** ``usage_rollup`` holds one number, ``rolled_through_id``:
every usage row with an id at or below it is counted, none above it. A batch locks that
row (``FOR UPDATE``), sums the next ``batch_rows`` rows above it into ``usage_daily`` and
moves it past them, all in ONE transaction: a leader that dies or raises mid-batch
commits neither the sums nor the move, and a second runner at once (the old leader
finishing its step while its lock's session was dying) waits on the row, then starts
after the first's batch.

**No row committed behind the mark.** Ids are drawn when a row is inserted but become
visible when its transaction commits, which is not in id order: a mark moved past id 101
while id 100's transaction was still open would skip 100 forever. So a step first takes
the *horizon*: ``LOCK TABLE usage IN SHARE MODE`` waits for every transaction that is
inserting into ``usage`` (an INSERT holds ``ROW EXCLUSIVE`` from before it draws its ids
until it ends) and the largest id visible then is final: every id at or below it is
committed or never will be. Batches never pass the horizon. The lock is taken and
released inside one statement (``relay_usage_horizon``), held while the server reads
``max(id)`` (the index's last entry), and waited for at most ``LOCK_TIMEOUT_MS``: the
settlers' inserts queue behind it for that long at worst, once per step; on a timeout (a
long writer or an autovacuum of ``usage``) the step rolls nothing and the next one tries
again.

Retention (``relay.cluster.pg_retention``) catches the rollup up first and archives and
deletes only rows at or below the mark: as embedded, archiving leaves the totals alone,
so no row leaves the hot table before it is counted.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from relay.storage.schema_rollup import LOCK_TIMEOUT_MS
from relay.usage.rollup import DAY_MS

__all__ = [
    "LOCK_TIMEOUT_MS",
    "PgRollupJob",
    "RollupReport",
    "catch_up",
    "roll_up_batch",
    "rolled_through",
    "usage_horizon",
]

log = logging.getLogger(__name__)

DEFAULT_BATCH_ROWS = 5000
DEFAULT_BATCHES_PER_STEP = 20


# One batch: the next rows above the mark (up to the horizon), summed per (account, day,
# model) and added to their totals; then the batch's size and last id.
_ROLL_BATCH = f"""
WITH batch AS (
    SELECT id, account_id, ts_ms, model, status, cost_micros, prompt_tokens, completion_tokens
      FROM usage WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3
), summed AS (
    INSERT INTO usage_daily AS daily (account_id, day, model, requests, errors, cost_micros,
                                      prompt_tokens, completion_tokens)
    SELECT COALESCE(account_id, ''), ts_ms / {DAY_MS}, COALESCE(model, ''), count(*),
           count(*) FILTER (WHERE status >= 400), sum(cost_micros), sum(prompt_tokens),
           sum(completion_tokens)
      FROM batch GROUP BY 1, 2, 3
    ON CONFLICT (account_id, day, model) DO UPDATE SET
        requests = daily.requests + excluded.requests,
        errors = daily.errors + excluded.errors,
        cost_micros = daily.cost_micros + excluded.cost_micros,
        prompt_tokens = daily.prompt_tokens + excluded.prompt_tokens,
        completion_tokens = daily.completion_tokens + excluded.completion_tokens
)
SELECT count(*) AS rows, max(id) AS last_id FROM batch
"""


class RollupReport(msgspec.Struct):
    """What one step did: rows summed, batches committed, the mark and horizon after it."""

    rows: int = 0
    batches: int = 0
    rolled_through_id: int = 0
    horizon_id: int | None = None


async def rolled_through(conn: Any) -> int:
    """The mark: every usage row with an id at or below it is in ``usage_daily``."""
    return int(await conn.fetchval("SELECT rolled_through_id FROM usage_rollup"))


async def usage_horizon(conn: Any) -> int | None:
    """The largest usage id below which no row can still appear, or None when the lock
    was not granted within ``LOCK_TIMEOUT_MS`` (see the module docstring). ``conn`` must
    not be in a transaction: the lock would last until that transaction ends."""
    import asyncpg  # the 'cluster' extra

    try:
        return int(await conn.fetchval("SELECT relay_usage_horizon()"))
    except asyncpg.LockNotAvailableError:
        log.info("rollup: usage is busy (a long writer or a vacuum); trying again next step")
        return None


async def roll_up_batch(conn: Any, *, horizon_id: int, batch_rows: int) -> tuple[int, int]:
    """Sum the next ``batch_rows`` rows above the mark (none past ``horizon_id``) and move
    the mark past them, in one transaction; returns (rows summed, the mark after)."""
    async with conn.transaction():
        mark = int(await conn.fetchval("SELECT rolled_through_id FROM usage_rollup FOR UPDATE"))
        if mark >= horizon_id:
            return 0, mark
        batch = await conn.fetchrow(_ROLL_BATCH, mark, horizon_id, batch_rows)
        rows = int(batch["rows"])
        # A short batch reached the horizon: the ids left below it are gaps (rolled back
        # inserts, skipped conflicts), final by the horizon's definition.
        moved_to = horizon_id if rows < batch_rows else int(batch["last_id"])
        await conn.execute("UPDATE usage_rollup SET rolled_through_id = $1", moved_to)
    return rows, moved_to


async def catch_up(
    conn: Any, *, batch_rows: int = DEFAULT_BATCH_ROWS, max_batches: int | None = None
) -> RollupReport:
    """Roll batches up to the horizon taken now (at most ``max_batches``, None: all)."""
    report = RollupReport(rolled_through_id=await rolled_through(conn))
    report.horizon_id = await usage_horizon(conn)
    if report.horizon_id is None:
        return report
    while report.rolled_through_id < report.horizon_id:
        if max_batches is not None and report.batches >= max_batches:
            break
        rows, report.rolled_through_id = await roll_up_batch(
            conn, horizon_id=report.horizon_id, batch_rows=batch_rows
        )
        report.rows += rows
        report.batches += 1
    return report


class PgRollupJob:
    """The job runner's rollup step: at most ``batches_per_step`` batches of ``batch_rows``
    (a backlog, e.g. after an outage, is worked off over the next steps)."""

    def __init__(
        self,
        pool: Any,
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        batches_per_step: int = DEFAULT_BATCHES_PER_STEP,
    ) -> None:
        if batch_rows < 1 or batches_per_step < 1:
            raise ValueError("batch_rows and batches_per_step must be at least 1")
        self._pool = pool
        self._batch_rows = batch_rows
        self._batches_per_step = batches_per_step
        self.last_report: RollupReport | None = None

    async def step(self) -> RollupReport:
        async with self._pool.acquire() as conn:
            report = await catch_up(
                conn, batch_rows=self._batch_rows, max_batches=self._batches_per_step
            )
        self.last_report = report
        if report.rows:
            log.debug("rollup: %d usage rows summed into usage_daily", report.rows)
        return report
