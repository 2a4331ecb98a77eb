"""The daily spend rollup kept by ``relay.usage.log.insert_usage`` and backfilled by migration 4."""

from __future__ import annotations

import sqlite3
from typing import Any

from relay.storage.batch import run_batch
from relay.storage.migrations import MIGRATIONS, apply_migrations
from relay.usage.log import UsageRecord, UsageWrite, insert_usage
from relay.usage.rollup import DAY_MS

ROWS: list[dict[str, Any]] = [
    {"account_id": "a", "ts_ms": 5, "model": "m1", "status": 200, "cost_micros": 10,
     "prompt_tokens": 3, "completion_tokens": 4},
    {"account_id": "a", "ts_ms": DAY_MS - 1, "model": "m1", "status": 502, "cost_micros": 0,
     "prompt_tokens": 1, "completion_tokens": 0},
    {"account_id": "a", "ts_ms": DAY_MS, "model": "m1", "status": 200, "cost_micros": 7,
     "prompt_tokens": 2, "completion_tokens": 2},
    {"account_id": None, "ts_ms": 9, "model": None, "status": 401, "cost_micros": 0,
     "prompt_tokens": 0, "completion_tokens": 0},
]  # fmt: skip


def _database() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    apply_migrations(conn)
    return conn


def _rollup(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT * FROM usage_daily ORDER BY account_id, day, model").fetchall()


def test_usage_rows_written_by_relay_are_rolled_up_per_day() -> None:
    conn = _database()
    for n, row in enumerate(ROWS):
        record = UsageRecord(request_id=f"r{n}", endpoint="chat", **row)
        insert_usage(conn, record)
    assert _rollup(conn) == [
        ("", 0, "", 1, 1, 0, 0, 0),
        ("a", 0, "m1", 2, 1, 10, 4, 4),
        ("a", 1, "m1", 1, 0, 7, 2, 2),
    ]
    assert conn.execute("SELECT COUNT(*) FROM usage").fetchone() == (len(ROWS),)


def _queued(record: UsageRecord) -> Any:
    # What UsageLog queues: the row and its count, both left to the batch.
    return UsageWrite(record, None)


def test_a_batch_counts_its_rows_with_one_upsert_per_account_day_and_model() -> None:
    conn = _database()
    upserts: list[str] = []
    conn.set_trace_callback(lambda sql: upserts.append(sql) if "usage_daily" in sql else None)
    records = [
        UsageRecord(request_id=f"r{n}", endpoint="chat", **row) for n, row in enumerate(ROWS)
    ]
    records += [UsageRecord(request_id="r9", endpoint="chat", **ROWS[0])]
    outcomes = run_batch(conn, [_queued(record) for record in records], replayable=True)
    assert all(outcome.error is None for outcome in outcomes)
    # Three (account, day, model) keys, not five rows: one statement of two rows and one
    # of one (relay.storage.multirow's sizes), each key counted once.
    assert len(upserts) == 2
    assert _rollup(conn) == [
        ("", 0, "", 1, 1, 0, 0, 0),
        ("a", 0, "m1", 3, 1, 20, 7, 8),
        ("a", 1, "m1", 1, 0, 7, 2, 2),
    ]


def test_a_failing_row_in_a_batch_is_not_counted_and_the_others_are() -> None:
    records = [
        UsageRecord(request_id=f"r{n}", endpoint="chat", **row) for n, row in enumerate(ROWS)
    ]
    records[1] = UsageRecord(request_id="taken", endpoint="chat", **ROWS[1])
    for durable in (False, True):  # without savepoints, then replayed; with them from the start
        conn = _database()
        insert_usage(conn, UsageRecord(request_id="taken", endpoint="chat", **ROWS[2]))
        outcomes = run_batch(
            conn, [_queued(record) for record in records], replayable=not durable, durable=durable
        )
        assert [outcome.error is None for outcome in outcomes] == [True, False, True, True]
        assert _rollup(conn) == [
            ("", 0, "", 1, 1, 0, 0, 0),
            ("a", 0, "m1", 1, 0, 10, 3, 4),
            ("a", 1, "m1", 2, 0, 14, 4, 4),  # "taken" (same day and model) and r2
        ]


def test_migration_backfills_existing_usage() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    apply_migrations(conn, MIGRATIONS[:3])
    conn.execute(
        "INSERT INTO usage (request_id, endpoint, ts_ms, account_id, model, status, cost_micros) "
        "VALUES ('r', 'chat', 1, 'a', 'm', 200, 5), ('s', 'chat', 2, 'a', 'm', 429, 0)"
    )
    apply_migrations(conn)
    assert _rollup(conn) == [("a", 0, "m", 2, 1, 5, 0, 0)]
