"""The daily rollup on PostgreSQL (relay.cluster.pg_rollup) on the real engine.

Usage rows summed into ``usage_daily`` by the job runner equal the embedded rollup of the
same rows, row for row; the work per step is bounded; a batch that raises or whose session
is killed before its commit counts nothing, and the next step (or the next leader) counts
every row exactly once; a row whose transaction commits after a later id was committed is
not skipped; retention archives only rows the rollup has counted, so the totals survive
archiving as embedded; the mark starts after rows ``relay migrate`` copied with their
totals; and the console's reads of the rollup answer as the embedded console's.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from relay.cluster.job_runner import ClusterJob, JobRunner
from relay.cluster.pg_charts import PgExactCharts
from relay.cluster.pg_pool import create_pool
from relay.cluster.pg_reader import PgReader
from relay.cluster.pg_retention import run_pg_retention
from relay.cluster.pg_rollup import PgRollupJob, catch_up, rolled_through
from relay.cluster.pg_schema import migrate
from relay.cluster.pg_usage import insert_usage
from relay.console import log_queries
from relay.storage.db import Database
from relay.storage.migrations import apply_migrations
from relay.storage.schema_list import MIGRATIONS
from relay.storage.schema_rollup import POSTGRESQL_ROLLUP
from relay.usage import log as embedded_log
from relay.usage.log import UsageRecord
from relay.usage.rollup import DAY_MS

asyncpg = pytest.importorskip("asyncpg")

NOW_MS = 1_764_892_800_000  # 2025-12-05 00:00 UTC
ACCOUNTS = ["acct_a", "acct_b", "acct_c", None]
MODELS = ["gpt-x", "claude-y", "mock", None]


def _records(
    count: int, *, seed: int, first_day_ms: int = NOW_MS - 3 * DAY_MS
) -> list[UsageRecord]:
    rng = random.Random(seed)
    return [
        UsageRecord(
            request_id=f"req_{seed}_{n}",
            ts_ms=first_day_ms + rng.randrange(4 * DAY_MS),
            endpoint="chat",
            status=rng.choice([200, 200, 200, 402, 429, 500, 503]),
            account_id=rng.choice(ACCOUNTS),
            key_id="key_1",
            model=rng.choice(MODELS),
            cost_micros=rng.randrange(0, 50_000),
            prompt_tokens=rng.randrange(0, 4000),
            completion_tokens=rng.randrange(0, 900),
        )
        for n in range(count)
    ]


def _embedded_rollup(records: list[UsageRecord]) -> list[tuple[Any, ...]]:
    """What the embedded writer's rollup makes of the same rows."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        apply_migrations(conn)
        for record in records:
            embedded_log.insert_usage(conn, record)
        return conn.execute("SELECT * FROM usage_daily ORDER BY 1, 2, 3").fetchall()
    finally:
        conn.close()


async def _pg_rollup(conn: Any) -> list[tuple[Any, ...]]:
    rows = await conn.fetch("SELECT * FROM usage_daily ORDER BY 1, 2, 3")
    return [tuple(row) for row in rows]


async def _insert(pool: Any, records: list[UsageRecord]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await insert_usage(conn, records)


@pytest.fixture
async def pool(pg_database: str) -> AsyncIterator[Any]:
    created = await create_pool(pg_database, min_size=1, max_size=6)
    async with created.acquire() as conn:
        await migrate(conn)
    try:
        yield created
    finally:
        await created.close()


async def test_the_rollup_equals_the_embedded_one_in_bounded_steps(pool: Any) -> None:
    records = _records(300, seed=1)
    await _insert(pool, records[:200])
    job = PgRollupJob(pool, batch_rows=16, batches_per_step=4)
    steps = 0
    while (report := await job.step()).rows:
        assert report.rows <= 16 * 4 and report.batches <= 4  # bounded work per step
        steps += 1
        if steps == 2:  # rows keep arriving while the rollup works
            await _insert(pool, records[200:])
    assert steps >= 300 // 64
    async with pool.acquire() as conn:
        assert await _pg_rollup(conn) == _embedded_rollup(records)
        assert await rolled_through(conn) == await conn.fetchval("SELECT max(id) FROM usage")
    again = await job.step()
    assert (again.rows, again.batches) == (0, 0)


class _Interrupted:
    """A connection on which the batch's move of the mark (its last statement) does
    ``action`` first, from the ``at``-th batch on: the batch's sums are written, then it
    fails before its commit."""

    def __init__(self, conn: Any, at: int, action: Callable[[Any], Awaitable[None]]) -> None:
        self._conn = conn
        self._at = at
        self._action = action
        self.moves = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def execute(self, sql: str, *args: Any) -> Any:
        if sql.startswith("UPDATE usage_rollup"):
            self.moves += 1
            if self.moves >= self._at:
                await self._action(self._conn)
        return await self._conn.execute(sql, *args)


async def _raise(conn: Any) -> None:
    raise RuntimeError("injected failure between the sums and the mark")


async def _kill_own_session(conn: Any) -> None:
    await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")


async def test_a_batch_that_raises_before_its_commit_counts_nothing(pool: Any) -> None:
    records = _records(100, seed=2)
    await _insert(pool, records)
    async with pool.acquire() as conn:
        broken = _Interrupted(conn, at=3, action=_raise)
        with pytest.raises(RuntimeError, match="injected"):
            await catch_up(broken, batch_rows=10)
        assert await rolled_through(conn) == 20  # two batches committed, the third not
        partial = await _pg_rollup(conn)
    assert sum(row[3] for row in partial) == 20
    report = await PgRollupJob(pool, batch_rows=10, batches_per_step=100).step()
    assert report.rows == 80
    async with pool.acquire() as conn:
        assert await _pg_rollup(conn) == _embedded_rollup(records)


async def test_two_steps_at_once_count_each_row_once(pool: Any) -> None:
    records = _records(400, seed=3)
    await _insert(pool, records)
    jobs = [PgRollupJob(pool, batch_rows=25, batches_per_step=100) for _ in range(3)]
    reports = await asyncio.gather(*(job.step() for job in jobs))
    assert sum(report.rows for report in reports) == 400
    async with pool.acquire() as conn:
        assert await _pg_rollup(conn) == _embedded_rollup(records)


async def _gone(dsn: str, pid: int) -> None:
    admin = await asyncpg.connect(dsn)
    try:
        while await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
            await asyncio.sleep(0.01)
    finally:
        await admin.close()


async def test_a_leader_killed_mid_batch_is_finished_by_the_next_leader(
    pool: Any, pg_database: str
) -> None:
    records = _records(120, seed=4)
    await _insert(pool, records)

    async def connect() -> Any:
        return await asyncpg.connect(pg_database)

    lock_pids: list[int] = []
    dying: JobRunner

    async def dying_step() -> None:
        # The whole instance dies in its third batch: its lock's session and its work's.
        async def die(conn: Any) -> None:
            lock_pids.append(dying._conn.get_server_pid())
            admin = await asyncpg.connect(pg_database)
            try:
                await admin.execute("SELECT pg_terminate_backend($1)", lock_pids[0])
            finally:
                await admin.close()
            await _kill_own_session(conn)

        conn = await asyncpg.connect(pg_database)
        try:
            await catch_up(_Interrupted(conn, at=3, action=die), batch_rows=10)
        finally:
            conn.terminate()

    dying = JobRunner(connect, [ClusterJob("usage_rollup", dying_step, interval_s=10.0)])
    survivor_job = PgRollupJob(pool, batch_rows=10, batches_per_step=100)
    survivor = JobRunner(connect, [ClusterJob("usage_rollup", survivor_job.step, interval_s=10.0)])
    try:
        await dying.round()  # leads; its step dies (logged) after two committed batches
        assert dying.terms == 1 and lock_pids
        async with pool.acquire() as conn:
            assert await rolled_through(conn) == 20
        await _gone(pg_database, lock_pids[0])
        await survivor.round()
        assert survivor.leader
        assert survivor_job.last_report is not None and survivor_job.last_report.rows == 100
        await dying.round()
        assert not dying.leader
    finally:
        await dying.stop()
        await survivor.stop()
    async with pool.acquire() as conn:
        assert await _pg_rollup(conn) == _embedded_rollup(records)


async def test_a_row_committed_after_a_later_id_is_not_skipped(pool: Any) -> None:
    first, second = _records(2, seed=5)
    writer = await pool.acquire()
    try:
        open_insert = writer.transaction()
        await open_insert.start()
        await insert_usage(writer, [first])  # draws the smaller id, commits last
        await _insert(pool, [second])
        started = time.monotonic()
        report = await PgRollupJob(pool).step()
        # The horizon waits for the open insert, briefly: nothing rolled, nothing skipped.
        assert (report.rows, report.horizon_id, report.rolled_through_id) == (0, None, 0)
        assert time.monotonic() - started < 2.0
        await open_insert.commit()
    finally:
        await pool.release(writer)
    report = await PgRollupJob(pool).step()
    assert report.rows == 2
    async with pool.acquire() as conn:
        assert await _pg_rollup(conn) == _embedded_rollup([first, second])


async def test_rows_committing_out_of_order_during_the_steps_are_counted_once(
    pool: Any,
) -> None:
    """Writers commit in an order unlike their ids (each sleeps inside its transaction),
    some roll back (gaps), while the rollup steps run: every committed row counts once."""
    records = _records(240, seed=11)
    committed: list[UsageRecord] = []
    writing = True

    async def writer(part: list[UsageRecord], rng: random.Random) -> None:
        for start in range(0, len(part), 4):
            batch = part[start : start + 4]
            async with pool.acquire() as conn:
                transaction = conn.transaction()
                await transaction.start()
                await insert_usage(conn, batch)
                await asyncio.sleep(rng.uniform(0, 0.03))
                if rng.random() < 0.2:
                    await transaction.rollback()
                else:
                    await transaction.commit()
                    committed.extend(batch)

    async def rolling() -> int:
        job, steps = PgRollupJob(pool, batch_rows=7, batches_per_step=3), 0
        while writing:
            await job.step()
            steps += 1
        return steps

    roller = asyncio.create_task(rolling())
    await asyncio.gather(*(writer(records[n::4], random.Random(n)) for n in range(4)))
    writing = False
    assert await roller > 3
    await PgRollupJob(pool, batches_per_step=100).step()
    async with pool.acquire() as conn:
        assert await _pg_rollup(conn) == _embedded_rollup(committed)
        assert 0 < len(committed) < len(records)


async def test_retention_archives_only_counted_rows_and_the_totals_survive(pool: Any) -> None:
    old = _records(40, seed=6, first_day_ms=NOW_MS - 200 * DAY_MS)
    hot = _records(10, seed=7, first_day_ms=NOW_MS - 3 * DAY_MS)
    await _insert(pool, old + hot)
    writer = await pool.acquire()
    try:
        blocking = writer.transaction()  # an insert in flight: the rollup cannot advance
        await blocking.start()
        await insert_usage(writer, _records(1, seed=8))
        report = await run_pg_retention(pool, now_ms=NOW_MS)
        assert report is not None and report.usage_rows_archived == 0
        await blocking.rollback()
    finally:
        await pool.release(writer)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM usage") == 50

    report = await run_pg_retention(pool, now_ms=NOW_MS)
    assert report is not None and report.usage_rows_archived == report.usage_rows_deleted == 40
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM usage") == 10
        # As embedded: the archived rows stay in their days' totals, counted once.
        assert await _pg_rollup(conn) == _embedded_rollup(old + hot)
    again = await PgRollupJob(pool).step()
    assert again.rows == 0


async def test_the_mark_starts_after_rows_copied_with_their_totals(pg_database: str) -> None:
    conn = await asyncpg.connect(pg_database)
    try:
        [rollup] = [m for m in MIGRATIONS if m.postgresql == POSTGRESQL_ROLLUP]
        await migrate(conn, MIGRATIONS[: rollup.number - 1])
        records = _records(30, seed=9)
        async with conn.transaction():
            await insert_usage(conn, records)
        # What `relay migrate` copied: the rows with SQLite's totals of them.
        await conn.executemany(
            "INSERT INTO usage_daily VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            _embedded_rollup(records),
        )
        assert await migrate(conn, MIGRATIONS[: rollup.number]) == [rollup.number]
        assert await rolled_through(conn) == await conn.fetchval("SELECT max(id) FROM usage")
        assert (await catch_up(conn)).rows == 0
        assert await _pg_rollup(conn) == _embedded_rollup(records)
    finally:
        await conn.close()


async def test_the_consoles_reads_of_the_rollup_answer_as_embedded(
    pool: Any, tmp_path: Path
) -> None:
    records = _records(200, seed=10)
    await _insert(pool, records)
    await PgRollupJob(pool, batches_per_step=100).step()
    pg = PgReader(pool)  # the console's reader in cluster mode (relay.console.services)
    db = await Database.open(tmp_path / "relay.db", flush_interval_s=0.01)
    try:
        for record in records:
            db.enqueue(lambda conn, r=record: embedded_log.insert_usage(conn, r))
        await db.flush()
        first, last = NOW_MS // DAY_MS - 5, NOW_MS // DAY_MS + 1
        for account in ("acct_a", "acct_b", "", "acct_none"):
            assert await log_queries.spend_per_day(
                pg, account, first_day=first, last_day=last
            ) == await log_queries.spend_per_day(db, account, first_day=first, last_day=last)
            assert await log_queries.daily_spend(
                pg, account, now_ms=NOW_MS
            ) == await log_queries.daily_spend(db, account, now_ms=NOW_MS)
            assert await log_queries.spend_by_model(
                pg, account, now_ms=NOW_MS, days=7
            ) == await log_queries.spend_by_model(db, account, now_ms=NOW_MS, days=7)
            assert await log_queries.spend_by_model(
                pg, account, first_day=first, last_day=first + 2
            ) == await log_queries.spend_by_model(db, account, first_day=first, last_day=first + 2)
        spend = await log_queries.spend_per_day(pg, "acct_a", first_day=first, last_day=last)
        assert all(type(cost) is int and type(n) is int for _, cost, n in spend)
        assert sum(cost for _, cost, _ in spend) > 0
    finally:
        await db.close()


async def test_the_exact_charts_add_the_rows_above_the_mark_once(pool: Any, tmp_path: Path) -> None:
    """The console's charts in cluster mode (PgExactCharts) answer as embedded while part of
    the rows is not rolled up yet (the runner's lag), and after they are: never a row
    missed or counted twice."""
    records = _records(300, seed=11)
    await _insert(pool, records[:200])
    await PgRollupJob(pool, batch_rows=70, batches_per_step=2).step()  # 140 rows rolled
    await _insert(pool, records[200:])
    async with pool.acquire() as conn:
        mark = await rolled_through(conn)
        tail = await conn.fetchval("SELECT count(*) FROM usage WHERE id > $1", mark)
    assert mark > 0 and tail == 160
    charts = PgExactCharts(pool)
    db = await Database.open(tmp_path / "relay.db", flush_interval_s=0.01)
    try:
        for record in records:
            db.enqueue(lambda conn, r=record: embedded_log.insert_usage(conn, r))
        await db.flush()
        first, last = NOW_MS // DAY_MS - 5, NOW_MS // DAY_MS + 1
        for step in range(2):
            # Not '': the rollup's name for rows without an account, which no console
            # page shows (the tail reads an account's rows by its index).
            for account in ("acct_a", "acct_b", "acct_c", "acct_none"):
                for span in ((first, last), (first + 3, first + 3), (last, last)):
                    days = {"first_day": span[0], "last_day": span[1]}
                    assert await charts.per_day(account, **days) == await log_queries.spend_per_day(
                        db, account, **days
                    )
                    assert await charts.by_model(
                        account, **days
                    ) == await log_queries.spend_by_model(db, account, **days)
            if step == 0:
                await PgRollupJob(pool, batches_per_step=100).step()  # all rolled up
        spend = await charts.per_day("acct_a", first_day=first, last_day=last)
        assert all(type(cost) is int and type(n) is int for _, cost, n in spend)
        assert sum(n for _, _, n in spend) > 0
    finally:
        await db.close()
