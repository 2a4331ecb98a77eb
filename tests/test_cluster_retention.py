"""Retention on PostgreSQL (relay.cluster.pg_retention) on the real engine, injected clocks.

Usage rows past 90 days become monthly per-account archives stored in PostgreSQL (their
gzip bytes in ``archive_chunks``, committed with the record), the rows are deleted, the
audit chain's last row stays, later rows of an archived month go to a part 2, archives
past two years expire with their bytes, two runs at once never archive a row twice, and a
run that stops between archiving and deleting is finished by the next. The last test
serves an archive through a `relay serve` instance's admin routes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ADMIN_TOKEN, mock_upstream

from relay.cluster import pg_retention
from relay.cluster.pg_pool import create_pool
from relay.cluster.pg_retention import run_pg_retention
from relay.cluster.pg_schema import migrate
from relay.usage.queries import DAY_MS
from relay.usage.retention import RetentionPolicy

asyncpg = pytest.importorskip("asyncpg")

NOW_MS = int(dt.datetime(2026, 12, 5, tzinfo=dt.UTC).timestamp() * 1000)
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def _ms(year: int, month: int, day: int) -> int:
    return int(dt.datetime(year, month, day, 12, tzinfo=dt.UTC).timestamp() * 1000)


@pytest.fixture
async def pool(pg_database: str) -> AsyncIterator[Any]:
    created = await create_pool(pg_database, min_size=1, max_size=4)
    async with created.acquire() as conn:
        await migrate(conn)
    try:
        yield created
    finally:
        await created.close()


async def _usage(pool: Any, rows: Sequence[tuple[str | None, int]]) -> None:
    for account, ts_ms in rows:
        await pool.execute(
            "INSERT INTO usage (request_id, ts_ms, account_id, endpoint, status, cost_micros)"
            " VALUES ($1, $2, $3, 'chat', 200, 7)",
            f"req_{await pool.fetchval('SELECT count(*) FROM usage')}_{ts_ms}",
            ts_ms,
            account,
        )


async def _audit(pool: Any, times: list[int]) -> None:
    for ts_ms in times:
        await pool.execute(
            "INSERT INTO audit (ts_ms, actor, action) VALUES ($1, 'admin', 'account.update')",
            ts_ms,
        )


async def _archive_bytes(pool: Any, name: str) -> bytes:
    chunks = await pool.fetch("SELECT data FROM archive_chunks WHERE name = $1 ORDER BY seq", name)
    return b"".join(bytes(row["data"]) for row in chunks)


Rows = list[tuple[str | None, int]]
OLD: Rows = [("acct_a", _ms(2026, 6, 3)), ("acct_a", _ms(2026, 6, 20)), ("acct_b", _ms(2026, 6, 9))]
OLDER: Rows = [("acct_a", _ms(2026, 5, 1)), (None, _ms(2026, 8, 30))]
HOT: Rows = [("acct_a", _ms(2026, 11, 30)), ("acct_b", _ms(2026, 10, 1))]


async def test_old_rows_become_monthly_archives_stored_in_postgresql(pool: Any) -> None:
    await _usage(pool, OLD + OLDER + HOT)
    await _audit(pool, [_ms(2026, 1, 5), _ms(2026, 2, 5), _ms(2026, 3, 5)])
    old_rows = {
        row["request_id"]: dict(row)
        for row in await pool.fetch("SELECT * FROM usage WHERE ts_ms < $1", NOW_MS - 90 * DAY_MS)
    }

    report = await run_pg_retention(pool, now_ms=NOW_MS)
    assert report is not None
    assert sorted(report.archives_written) == [
        "audit-2026-01.jsonl.gz",
        "audit-2026-02.jsonl.gz",
        "usage-_none-2026-08.jsonl.gz",
        "usage-acct_a-2026-05.jsonl.gz",
        "usage-acct_a-2026-06.jsonl.gz",
        "usage-acct_b-2026-06.jsonl.gz",
    ]
    assert (report.usage_rows_archived, report.usage_rows_deleted) == (5, 5)
    # The chain's newest row stays hot, whatever its age: new rows link to it.
    assert (report.audit_rows_archived, report.audit_rows_deleted) == (2, 2)
    assert await pool.fetchval("SELECT count(*) FROM audit") == 1
    hot = await pool.fetch("SELECT account_id FROM usage ORDER BY ts_ms")
    assert [row["account_id"] for row in hot] == ["acct_b", "acct_a"]

    archived: dict[str, Any] = {}
    for record in await pool.fetch("SELECT * FROM archives WHERE kind = 'usage'"):
        data = await _archive_bytes(pool, record["name"])
        assert record["purged"] == 1 and record["bytes"] == len(data)
        assert record["sha256"] == hashlib.sha256(data).hexdigest()
        lines = [json.loads(line) for line in gzip.decompress(data).splitlines()]
        assert len(lines) == record["rows"]
        archived.update((line["request_id"], line) for line in lines)
    assert archived == old_rows  # every column of every old row, once

    again = await run_pg_retention(pool, now_ms=NOW_MS)
    assert again is not None and again.archives_written == []

    # A late row of an archived month (a slow settlement): a second part, not an overwrite.
    await _usage(pool, [("acct_a", _ms(2026, 6, 25))])
    late = await run_pg_retention(pool, now_ms=NOW_MS)
    assert late is not None and late.archives_written == ["usage-acct_a-2026-06-part2.jsonl.gz"]


async def test_archives_past_two_years_expire_with_their_bytes(pool: Any) -> None:
    await _usage(pool, OLD)
    await run_pg_retention(pool, now_ms=NOW_MS)
    assert await pool.fetchval("SELECT count(*) FROM archive_chunks") == 2
    # Kept 730 days after the month's end (2026-07-01): not yet on 2028-06-29.
    report = await run_pg_retention(pool, now_ms=_ms(2028, 6, 29))
    assert report is not None and report.archives_expired == []
    later = await run_pg_retention(pool, now_ms=_ms(2028, 7, 2))
    assert later is not None
    assert sorted(later.archives_expired) == [
        "usage-acct_a-2026-06.jsonl.gz",
        "usage-acct_b-2026-06.jsonl.gz",
    ]
    assert await pool.fetchval("SELECT count(*) FROM archives") == 0
    assert await pool.fetchval("SELECT count(*) FROM archive_chunks") == 0


async def test_two_runs_at_once_archive_each_row_once(pool: Any, pg_database: str) -> None:
    await _usage(pool, [("acct_a", _ms(2026, 6, day)) for day in range(1, 29)] + HOT)
    other = await create_pool(pg_database, min_size=1, max_size=2)
    try:
        reports = await asyncio.gather(
            run_pg_retention(pool, now_ms=NOW_MS), run_pg_retention(other, now_ms=NOW_MS)
        )
    finally:
        await other.close()
    archived = sum(report.usage_rows_archived for report in reports if report is not None)
    assert archived == 28
    assert await pool.fetchval("SELECT sum(rows) FROM archives") == 28
    assert await pool.fetchval("SELECT count(*) FROM usage") == len(HOT)


async def test_a_run_stopped_before_deleting_is_finished_by_the_next(
    pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _usage(pool, OLD + HOT)
    monkeypatch.setattr(pg_retention, "ARCHIVE_CHUNK_BYTES", 64)  # several chunks each

    async def crash(*args: Any) -> None:
        raise ConnectionResetError("the instance died after the archive committed")

    with monkeypatch.context() as patch:
        patch.setattr(pg_retention, "_finish_purge", crash)
        with pytest.raises(ConnectionResetError):
            await run_pg_retention(pool, now_ms=NOW_MS)
    assert await pool.fetchval("SELECT count(*) FROM archives WHERE purged = 0") == 1
    assert await pool.fetchval("SELECT count(*) FROM usage") == len(OLD + HOT)

    report = await run_pg_retention(pool, now_ms=NOW_MS)
    assert report is not None and report.usage_rows_deleted == len(OLD)
    assert report.archives_written == ["usage-acct_b-2026-06.jsonl.gz"]
    assert await pool.fetchval("SELECT sum(rows) FROM archives") == len(OLD)
    assert await pool.fetchval("SELECT count(*) FROM archives WHERE purged = 0") == 0
    name = "usage-acct_a-2026-06.jsonl.gz"
    assert await pool.fetchval("SELECT count(*) FROM archive_chunks WHERE name = $1", name) > 1
    lines = gzip.decompress(await _archive_bytes(pool, name)).splitlines()
    assert len(lines) == 2


async def test_a_record_without_bytes_keeps_its_rows_hot(pool: Any) -> None:
    # `relay migrate` copies archive records; their files stay on the embedded disk.
    await _usage(pool, OLD)
    await pool.execute(
        "INSERT INTO archives (name, kind, account_id, month, rows, bytes, sha256,"
        " created_at_ms, from_ms, until_ms, max_id, purged) VALUES ('usage-acct_a-2026-06"
        ".jsonl.gz', 'usage', 'acct_a', '2026-06', 2, 10, 'x', 0, $1, $2, 1000, 0)",
        _ms(2026, 6, 1),
        _ms(2026, 7, 1),
    )
    report = await run_pg_retention(pool, now_ms=NOW_MS, policy=RetentionPolicy())
    assert report is not None
    assert report.usage_rows_archived == len(OLD) and report.usage_rows_deleted == len(OLD)
    assert await pool.fetchval("SELECT count(*) FROM archive_chunks") > 0


@pytest.mark.subprocess
@pytest.mark.slow
async def test_any_instance_lists_and_serves_the_archives(
    tmp_path: Path, pg_database: str, redis_server: Any, pool: Any
) -> None:
    from support_cluster_serve import Cluster

    await _usage(pool, OLD)
    await run_pg_retention(pool, now_ms=NOW_MS)
    upstream = await mock_upstream.start(port=0, options=mock_upstream.MockOptions())
    redis_url = f"redis://127.0.0.1:{redis_server.port}/13"
    cluster = Cluster(tmp_path, pg_database, redis_url, f"http://127.0.0.1:{upstream.port}/v1")
    try:
        instance = await cluster.start()
        async with instance.client() as client:
            # Accounts are named in the filter by id or name; acct_b is not an account here.
            listed = await client.get("/admin/archives", params={"kind": "usage"}, headers=ADMIN)
            assert listed.status_code == 200, listed.text
            names = [item["name"] for item in listed.json()["data"]]
            assert names == ["usage-acct_a-2026-06.jsonl.gz", "usage-acct_b-2026-06.jsonl.gz"]
            got = await client.get(f"/admin/archives/{names[0]}", headers=ADMIN)
            assert got.status_code == 200
            assert got.headers["x-relay-sha256"] == hashlib.sha256(got.content).hexdigest()
            assert got.headers["x-relay-rows"] == "2"
            assert len(gzip.decompress(got.content).splitlines()) == 2
            missing = await client.get("/admin/archives/nope.jsonl.gz", headers=ADMIN)
            assert missing.status_code == 404
            refused = await client.get("/admin/archives", headers={"authorization": "Bearer x"})
            assert refused.status_code in (401, 403)
            assert isinstance(refused, httpx.Response)
    finally:
        await asyncio.to_thread(cluster.stop_all)
        await upstream.close()
