"""Usage summaries and exports read from PostgreSQL (relay.cluster.pg_usage_reads) answer
exactly what the embedded queries answer over the same rows (real PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_usage_queries import DAY_MS, JUNE_1, MAY_1, insert, record

from relay.cluster import pg_usage_reads
from relay.cluster.pg_schema import migrate
from relay.cluster.pg_usage import insert_usage
from relay.storage.db import Database
from relay.usage import queries
from relay.usage.log import UsageRecord
from relay.usage.queries import GROUPINGS, RowRange, SummaryFilter

asyncpg = pytest.importorskip("asyncpg")

ROWS: list[UsageRecord] = [
    *(record(i, latency_ms=(i + 1) * 10, status=500 if i == 0 else 200) for i in range(10)),
    *(
        record(
            100 + i,
            ts_ms=MAY_1 + DAY_MS + i,
            model="claude",
            account_id="acct_b",
            key_id="key_b",
            prompt_tokens=20,
            completion_tokens=1,
            cost_micros=7,
            latency_ms=None if i == 0 else 50,
            stream=i % 2 == 0,
        )
        for i in range(4)
    ),
    record(200, ts_ms=MAY_1 + 5, account_id=None, key_id=None, upstream_request_id='a,"b'),
    record(999, ts_ms=JUNE_1, cost_micros=1_000_000),
]


@pytest.fixture
async def engines(tmp_path: Path, pg_database: str) -> AsyncIterator[tuple[Database, Any]]:
    db = await Database.open(tmp_path / "relay.db", flush_interval_s=0.001)
    conn = await asyncpg.connect(pg_database)
    try:
        await migrate(conn)
        await insert(db, ROWS)
        async with conn.transaction():
            await insert_usage(conn, ROWS)
        yield db, conn
    finally:
        await conn.close()
        await db.close()


async def test_summaries_match_the_embedded_ones_for_every_grouping(
    engines: tuple[Database, Any],
) -> None:
    db, conn = engines
    for by in GROUPINGS:
        for extra in ({}, {"account_id": "acct_b"}, {"model": "gpt", "key_id": "key_a"}):
            spec = SummaryFilter(start_ms=MAY_1, end_ms=JUNE_1, by=by, **extra)  # type: ignore[arg-type]
            embedded = await queries.usage_summary(db, spec)
            assert embedded  # a real comparison, never two empty lists
            assert await pg_usage_reads.usage_summary(conn, spec) == embedded, (by, extra)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_exports_match_the_embedded_ones_byte_for_byte(
    engines: tuple[Database, Any], fmt: str
) -> None:
    db, conn = engines
    for rows in (
        RowRange("usage", MAY_1, JUNE_1),
        RowRange("usage", MAY_1, JUNE_1, account_id="acct_b", any_account=False),
        RowRange("usage", MAY_1, JUNE_1, account_id=None, any_account=False),
    ):
        embedded = b"".join([c async for c in queries.export_usage(db, rows, fmt)])  # type: ignore[arg-type]
        found = b"".join([c async for c in pg_usage_reads.export_usage(conn, rows, fmt)])  # type: ignore[arg-type]
        assert found == embedded and embedded.count(b"\n") >= 1
        assert await pg_usage_reads.count_rows(conn, rows) == await queries.count_rows(db, rows)


def test_placeholders_are_numbered_and_is_becomes_null_safe() -> None:
    sql = "SELECT 1 WHERE a = ? AND b IS ? AND c < ?"
    assert pg_usage_reads.to_pg(sql) == (
        "SELECT 1 WHERE a = $1 AND b IS NOT DISTINCT FROM $2 AND c < $3"
    )
