"""The console's reads on PostgreSQL (relay.cluster.pg_reader) answer
exactly what the embedded ones answer over the same usage rows (real PostgreSQL).

The rows are test_cluster_usage_reads's: two accounts, two models, errors, a row without
an account, a row in the next month; written to SQLite by the embedded usage log (with
its ``usage_daily`` rollup) and to PostgreSQL by the settler's insert.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_cluster_usage_reads import ROWS
from test_usage_queries import DAY_MS, JUNE_1, MAY_1, insert

from relay.cluster.pg_reader import PgReader
from relay.cluster.pg_schema import migrate
from relay.cluster.pg_usage import insert_usage
from relay.console import log_queries
from relay.console.log_queries import LogFilter
from relay.storage.db import Database

asyncpg = pytest.importorskip("asyncpg")

FILTERS = [
    LogFilter(),
    LogFilter(status="error"),
    LogFilter(status="ok"),
    LogFilter(status="500"),
    LogFilter(model="claude"),
    LogFilter(key_id="key_b", status="ok"),
    LogFilter(since="2024-05-02", until="2024-05-31"),
    LogFilter(until="2024-05-01"),
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


def _plain(rows: list[Any]) -> list[dict[str, Any]]:
    return [{name: row[name] for name in row.keys()} for row in rows]


async def test_log_pages_totals_and_entries_match_the_embedded_ones(
    engines: tuple[Database, Any],
) -> None:
    db, conn = engines
    pg = PgReader(conn)
    compared = 0
    for account in ("acct_a", "acct_b"):
        for flt in FILTERS:
            # Pages of 3 (a next-page cursor) walked to the end on both engines.
            before_sqlite: int | None = None
            before_pg: int | None = None
            while True:
                rows, before_sqlite = await log_queries.log_page(
                    db, account, flt, before_id=before_sqlite, limit=3
                )
                pg_rows, before_pg = await log_queries.log_page(
                    pg, account, flt, before_id=before_pg, limit=3
                )
                assert _plain(pg_rows) == _plain(rows), (account, flt)
                assert before_pg == before_sqlite
                compared += len(rows)
                if before_sqlite is None:
                    break
            totals = await log_queries.log_totals(db, account, flt)
            assert await log_queries.log_totals(pg, account, flt) == totals, (account, flt)
        errors = await log_queries.recent_errors(db, account)
        assert _plain(await log_queries.recent_errors(pg, account)) == _plain(errors)
        first, last = MAY_1 // DAY_MS, JUNE_1 // DAY_MS
        by_key = await log_queries.spend_by_key(db, account, first_day=first, last_day=last)
        assert by_key
        assert await log_queries.spend_by_key(pg, account, first_day=first, last_day=last) == by_key
    assert compared > 10  # a real comparison, never two empty lists
    entry = await log_queries.log_entry(db, "acct_a", "req_3")
    assert entry is not None
    assert _plain([await log_queries.log_entry(pg, "acct_a", "req_3")]) == _plain([entry])
    assert await log_queries.log_entry(pg, "acct_b", "req_3") is None  # another account's
