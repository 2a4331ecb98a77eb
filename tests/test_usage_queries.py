"""Usage summaries, keyset paging and exports on a small seeded database; index use."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.api.responses import RESPONSE_OWNER_SQL
from relay.storage.db import Database
from relay.usage.log import UsageRecord, insert_usage
from relay.usage.queries import (
    DAY_MS,
    EXPORT_COLUMNS,
    RowRange,
    SummaryFilter,
    count_rows,
    day_range_ms,
    export_usage,
    iter_pages,
    summary_queries,
    usage_summary,
)

MAY_1 = int(dt.datetime(2024, 5, 1, tzinfo=dt.UTC).timestamp() * 1000)
JUNE_1 = int(dt.datetime(2024, 6, 1, tzinfo=dt.UTC).timestamp() * 1000)


def record(n: int, **fields: Any) -> UsageRecord:
    base: dict[str, Any] = {
        "request_id": f"req_{n}",
        "ts_ms": MAY_1,
        "endpoint": "chat",
        "status": 200,
        "account_id": "acct_a",
        "key_id": "key_a",
        "model": "gpt",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost_micros": 100,
        "latency_ms": 100,
    }
    return UsageRecord(**(base | fields))


async def insert(db: Database, records: list[UsageRecord]) -> None:
    def write(conn: sqlite3.Connection) -> None:
        for item in records:
            insert_usage(conn, item)

    await db.write(write)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "relay.db", flush_interval_s=0.001)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
async def seeded(db: Database) -> Database:
    records = [
        # Day 1: model gpt, account a, latencies 10..100, one error.
        *(record(i, latency_ms=(i + 1) * 10, status=500 if i == 0 else 200) for i in range(10)),
        # Day 2: model claude, account b, key b.
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
            )
            for i in range(4)
        ),
        # June: outside a May range.
        record(999, ts_ms=JUNE_1, cost_micros=1_000_000),
    ]
    await insert(db, records)
    return db


def may(**fields: Any) -> SummaryFilter:
    return SummaryFilter(start_ms=MAY_1, end_ms=JUNE_1, **fields)


async def test_summary_by_model_sums_and_percentiles(seeded: Database) -> None:
    groups = {g.group: g for g in await usage_summary(seeded, may(by="model"))}
    assert set(groups) == {"gpt", "claude"}
    gpt = groups["gpt"]
    assert (gpt.requests, gpt.prompt_tokens, gpt.completion_tokens) == (10, 100, 50)
    assert (gpt.total_tokens, gpt.cost_micros, gpt.errors, gpt.error_rate) == (150, 1000, 1, 0.1)
    # Nearest rank: p50 is the 5th of 10 (50 ms), p95 the 10th (100 ms).
    assert (gpt.p50_latency_ms, gpt.p95_latency_ms) == (50, 100)
    claude = groups["claude"]
    assert (claude.requests, claude.cost_micros, claude.errors) == (4, 28, 0)
    assert (claude.p50_latency_ms, claude.p95_latency_ms) == (50, 50)  # the null is skipped


async def test_summary_by_day_and_filters(seeded: Database) -> None:
    days = await usage_summary(seeded, may(by="day"))
    assert [(g.group, g.requests) for g in days] == [("2024-05-01", 10), ("2024-05-02", 4)]
    by_key = await usage_summary(seeded, may(by="key", account_id="acct_b"))
    assert [(g.group, g.requests, g.prompt_tokens) for g in by_key] == [("key_b", 4, 80)]
    only = await usage_summary(seeded, may(by="account", model="gpt", key_id="key_a"))
    assert [(g.group, g.requests) for g in only] == [("acct_a", 10)]
    assert await usage_summary(seeded, may(by="day", model="none-such")) == []


def test_day_range_is_inclusive_and_defaults_to_30_days() -> None:
    start, end = day_range_ms("2024-05-01", "2024-05-31", today=dt.date(2030, 1, 1))
    assert (start, end) == (MAY_1, JUNE_1)
    start, end = day_range_ms(None, None, today=dt.date(2024, 5, 30))
    assert (start, end) == (MAY_1, MAY_1 + 30 * DAY_MS)
    with pytest.raises(ValueError):
        day_range_ms("2024-06-02", "2024-06-01", today=dt.date(2024, 6, 1))


def plan(path: Path, sql: str, params: list[Any]) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


def assert_index_search(details: list[str]) -> None:
    usage_steps = [d for d in details if d.startswith(("SCAN usage", "SEARCH usage"))]
    assert usage_steps, details
    for step in usage_steps:
        assert step.startswith("SEARCH usage USING") and "INDEX" in step, details


@pytest.mark.parametrize(
    "fields",
    [
        {"by": "day"},
        {"by": "model", "account_id": "acct_a"},
        {"by": "day", "key_id": "key_a"},
        {"by": "key", "model": "gpt"},
        {"by": "account", "account_id": "acct_a", "model": "gpt"},
    ],
)
async def test_summary_queries_search_an_index(seeded: Database, fields: dict[str, Any]) -> None:
    for sql, params in summary_queries(may(**fields)):
        assert_index_search(plan(seeded.path, sql, params))


async def test_usage_carries_only_the_indexes_readers_need(seeded: Database) -> None:
    # Each index is one more B-tree insert per request; key and model summaries search
    # usage_key_id / usage_ts instead of their own (key, ts) and (model, ts) indexes.
    with sqlite3.connect(seeded.path) as conn:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'usage'"
        ).fetchall()
    names = {name for (name,) in rows}
    assert "usage_key_ts" not in names and "usage_model_ts" not in names
    assert {"usage_ts", "usage_account_ts", "usage_key_id", "usage_account_id"} <= names
    key_plan = plan(seeded.path, *summary_queries(may(by="day", key_id="key_a"))[0])
    assert any("usage_key_id" in step for step in key_plan), key_plan
    model_plan = plan(seeded.path, *summary_queries(may(by="key", model="gpt"))[0])
    assert any("usage_ts" in step for step in model_plan), model_plan


async def test_paging_and_counting_search_an_index(seeded: Database) -> None:
    for rows in (
        RowRange("usage", MAY_1, JUNE_1),
        RowRange("usage", MAY_1, JUNE_1, account_id="acct_a", any_account=False, max_id=9),
    ):
        where, params = rows.where()
        sql = f"SELECT * FROM usage WHERE {where} AND NOT (ts_ms = ? AND id <= ?) "
        sql += "ORDER BY ts_ms, id LIMIT 10"
        details = plan(seeded.path, sql, [*params, 0, 0])
        assert_index_search(details)
        assert not any("TEMP B-TREE" in d for d in details), details  # no sort of the range
        assert_index_search(plan(seeded.path, f"SELECT COUNT(*) FROM usage WHERE {where}", params))


async def test_pages_visit_every_row_once_despite_equal_timestamps(db: Database) -> None:
    # 25 rows over 3 distinct timestamps, pages of 4: the keyset must break ties by id.
    await insert(db, [record(i, ts_ms=MAY_1 + i % 3) for i in range(25)])
    seen = [
        row["request_id"]
        async for page in iter_pages(db, RowRange("usage", MAY_1, JUNE_1), page_rows=4)
        for row in page
    ]
    assert sorted(seen) == sorted(f"req_{i}" for i in range(25))
    assert await count_rows(db, RowRange("usage", MAY_1, JUNE_1)) == 25


async def db_rows(db: Database, where: str = "1 = 1", params: tuple[Any, ...] = ()) -> list[Any]:
    columns = ", ".join(EXPORT_COLUMNS)
    rows = await db.fetchall(
        f"SELECT {columns} FROM usage WHERE ts_ms >= ? AND ts_ms < ? AND {where} "
        "ORDER BY ts_ms, id",
        (MAY_1, JUNE_1, *params),
    )
    return [dict(row) for row in rows]


async def collect(db: Database, rows: RowRange, fmt: Any) -> bytes:
    return b"".join([chunk async for chunk in export_usage(db, rows, fmt)])


async def test_jsonl_export_matches_the_month(seeded: Database) -> None:
    body = await collect(seeded, RowRange("usage", MAY_1, JUNE_1), "jsonl")
    exported = [json.loads(line) for line in body.decode().splitlines()]
    assert exported == await db_rows(seeded)
    assert len(exported) == 14  # June's row is not in May


async def test_csv_export_of_one_account_matches(seeded: Database) -> None:
    rows = RowRange("usage", MAY_1, JUNE_1, account_id="acct_b", any_account=False)
    body = await collect(seeded, rows, "csv")
    reader = list(csv.reader(io.StringIO(body.decode())))
    assert tuple(reader[0]) == EXPORT_COLUMNS
    expected = await db_rows(seeded, "account_id = ?", ("acct_b",))
    as_text = [["" if v is None else str(v) for v in row.values()] for row in expected]
    assert reader[1:] == as_text
    assert len(as_text) == 4


async def test_a_stored_responses_owner_is_one_index_search(seeded: Database) -> None:
    # Any client may ask for any id: an unknown one must not walk the account's 90 days.
    details = plan(seeded.path, RESPONSE_OWNER_SQL, ["acct_a", "resp_unknown"])
    assert details == ["SEARCH usage USING INDEX usage_responses (upstream_request_id=?)"]
