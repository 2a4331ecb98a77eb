"""The retention job on 120 days of synthetic usage, audit and ledger rows."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.storage.db import Database
from relay.usage import retention
from relay.usage.log import UsageRecord, insert_usage
from relay.usage.queries import DAY_MS
from relay.usage.retention import (
    RetentionJob,
    RetentionPolicy,
    archive_dir_for,
    run_retention,
)

NOW_MS = int(dt.datetime(2024, 6, 15, 12, tzinfo=dt.UTC).timestamp() * 1000)
CUTOFF_MS = NOW_MS - 90 * DAY_MS
ACCOUNTS = ("acct_a", "acct_b", "acct_c", None)  # None: a request refused before auth
PER_DAY = 8  # rows per account and day: 120 days x 4 accounts x 8 = 3,840 rows


class SimulatedCrash(Exception):
    pass


def usage_rows() -> list[UsageRecord]:
    rows = []
    for day in range(120):
        for account in ACCOUNTS:
            for i in range(PER_DAY):
                ts_ms = NOW_MS - day * DAY_MS - i * 997
                n = len(rows)
                rows.append(
                    UsageRecord(
                        request_id=f"req_{n}",
                        ts_ms=ts_ms,
                        endpoint="chat",
                        status=200 if n % 13 else 502,
                        account_id=account,
                        key_id=f"key_{account}",
                        model="gpt" if n % 2 else "claude",
                        prompt_tokens=n % 50,
                        completion_tokens=n % 7,
                        cost_micros=n,
                        latency_ms=n % 300,
                    )
                )
    return rows


def seed(conn: sqlite3.Connection) -> None:
    for account in ACCOUNTS[:3]:
        conn.execute(
            "INSERT INTO accounts (id, name, mode, created_at_ms, updated_at_ms) "
            "VALUES (?, ?, 'prepaid', 0, 0)",
            (account, account),
        )
    for record in usage_rows():
        insert_usage(conn, record)
    for day in range(120):
        ts_ms = NOW_MS - (119 - day) * DAY_MS
        conn.execute(
            "INSERT INTO audit (ts_ms, actor, action, target, detail, prev_hash, hash) "
            "VALUES (?, 'admin-token', 'wallet.credit', 'acct_a', '{}', ?, ?)",
            (ts_ms, f"h{day - 1}", f"h{day}"),
        )
        conn.execute(
            "INSERT INTO ledger (account_id, kind, amount_micros, reference, created_at_ms) "
            "VALUES ('acct_a', 'credit', 1000, ?, ?)",
            (f"ref-{day}", ts_ms),
        )


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "relay.db", flush_interval_s=0.001)
    await database.write(seed)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def archives(tmp_path: Path) -> Path:
    return archive_dir_for(tmp_path / "relay.db")


async def recorded(db: Database) -> list[dict[str, Any]]:
    return [dict(row) for row in await db.fetchall("SELECT * FROM archives ORDER BY name")]


def archived_rows(folder: Path, record: dict[str, Any]) -> list[dict[str, Any]]:
    """Decompress one archive after checking its recorded size and SHA-256."""
    data = (folder / record["name"]).read_bytes()
    assert len(data) == record["bytes"]
    assert hashlib.sha256(data).hexdigest() == record["sha256"]
    rows = [json.loads(line) for line in gzip.decompress(data).splitlines()]
    assert len(rows) == record["rows"]
    return rows


async def all_request_ids(db: Database, folder: Path) -> list[str]:
    """Every usage row's request id, from the archives and the hot table together."""
    ids = [
        row["request_id"]
        for record in await recorded(db)
        if record["kind"] == "usage"
        for row in archived_rows(folder, record)
    ]
    hot = await db.fetchall("SELECT request_id FROM usage")
    return ids + [row[0] for row in hot]


def expected_ids() -> list[str]:
    return [record.request_id for record in usage_rows()]


async def count(db: Database, sql: str, params: tuple[Any, ...] = ()) -> int:
    row = await db.fetchone(sql, params)
    assert row is not None
    return int(row[0])


async def test_old_rows_move_to_checked_archives(db: Database, archives: Path) -> None:
    ledger_before = [tuple(r) for r in await db.fetchall("SELECT * FROM ledger ORDER BY id")]
    old = [r for r in usage_rows() if r.ts_ms < CUTOFF_MS]
    report = await run_retention(db, archives, now_ms=NOW_MS)

    assert report.usage_rows_archived == report.usage_rows_deleted == len(old) > 0
    assert await count(db, "SELECT COUNT(*) FROM usage WHERE ts_ms < ?", (CUTOFF_MS,)) == 0
    hot = len(usage_rows()) - len(old)
    assert await count(db, "SELECT COUNT(*) FROM usage") == hot
    assert sorted(await all_request_ids(db, archives)) == sorted(expected_ids())

    records = await recorded(db)
    usage_records = [r for r in records if r["kind"] == "usage"]
    # One file per account and month: 4 accounts x (March, April) below the cutoff.
    assert {(r["account_id"], r["month"]) for r in usage_records} == {
        (account, month) for account in ACCOUNTS for month in ("2024-02", "2024-03")
    }
    assert all(r["purged"] == 1 for r in records)
    for record in usage_records:
        for row in archived_rows(archives, record):
            assert row["account_id"] == record["account_id"]
            assert row["ts_ms"] < CUTOFF_MS
            assert set(row) >= {"id", "request_id", "cost_micros", "latency_ms"}

    audit_archived = [
        row
        for record in records
        if record["kind"] == "audit"
        for row in archived_rows(archives, record)
    ]
    assert audit_archived and all(row["ts_ms"] < CUTOFF_MS for row in audit_archived)
    assert report.audit_rows_archived == report.audit_rows_deleted == len(audit_archived)
    assert await count(db, "SELECT COUNT(*) FROM audit WHERE ts_ms < ?", (CUTOFF_MS,)) == 0
    assert await count(db, "SELECT COUNT(*) FROM audit") == 120 - len(audit_archived)

    ledger_after = [tuple(r) for r in await db.fetchall("SELECT * FROM ledger ORDER BY id")]
    assert ledger_after == ledger_before  # kept forever, old rows included


async def test_a_second_run_is_a_no_op(db: Database, archives: Path) -> None:
    await run_retention(db, archives, now_ms=NOW_MS)
    before = await recorded(db)
    files = sorted(p.name for p in archives.iterdir())
    report = await run_retention(db, archives, now_ms=NOW_MS)
    assert report.archives_written == report.orphans_removed == report.archives_expired == []
    assert report.usage_rows_deleted == report.audit_rows_deleted == 0
    assert await recorded(db) == before
    assert sorted(p.name for p in archives.iterdir()) == files


async def test_deletes_in_bounded_batches(db: Database, archives: Path) -> None:
    commits = db.commits
    report = await run_retention(db, archives, now_ms=NOW_MS, policy=RetentionPolicy(batch_rows=50))
    # Each archive: its record, then ceil(rows / 50) (+1 when a multiple) delete writes.
    assert db.commits - commits >= report.usage_rows_deleted // 50
    assert sorted(await all_request_ids(db, archives)) == sorted(expected_ids())


async def test_crash_after_recording_before_deleting_finishes_next_run(
    db: Database, archives: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def crash(*args: Any) -> None:
        raise SimulatedCrash

    monkeypatch.setattr(retention, "_finish_purge", crash)
    with pytest.raises(SimulatedCrash):
        await run_retention(db, archives, now_ms=NOW_MS)
    assert [r["purged"] for r in await recorded(db)] == [0]  # written, rows still hot
    monkeypatch.undo()

    report = await run_retention(db, archives, now_ms=NOW_MS)
    assert report.orphans_removed == []
    ids = await all_request_ids(db, archives)
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(expected_ids())
    assert await count(db, "SELECT COUNT(*) FROM usage WHERE ts_ms < ?", (CUTOFF_MS,)) == 0


async def test_crash_after_writing_the_file_before_recording_it(
    db: Database, archives: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(conn: sqlite3.Connection, record: Any) -> None:
        raise SimulatedCrash

    monkeypatch.setattr(retention, "_insert_record", crash)
    with pytest.raises(SimulatedCrash):
        await run_retention(db, archives, now_ms=NOW_MS)
    (orphan,) = [p.name for p in archives.iterdir()]
    assert await recorded(db) == []
    monkeypatch.undo()

    report = await run_retention(db, archives, now_ms=NOW_MS)
    assert report.orphans_removed == [orphan]
    ids = await all_request_ids(db, archives)
    assert len(ids) == len(set(ids)) and sorted(ids) == sorted(expected_ids())


async def test_leftover_temp_files_are_removed(db: Database, archives: Path) -> None:
    archives.mkdir()
    (archives / "usage-acct_a-2024-02.jsonl.gz.tmp").write_bytes(b"partial")
    (archives / "README").write_text("not ours: kept")
    report = await run_retention(db, archives, now_ms=NOW_MS)
    assert report.orphans_removed == ["usage-acct_a-2024-02.jsonl.gz.tmp"]
    assert (archives / "README").exists()


async def test_late_rows_of_an_archived_month_go_to_a_new_part(
    db: Database, archives: Path
) -> None:
    await run_retention(db, archives, now_ms=NOW_MS)
    late = UsageRecord(
        request_id="req_late", ts_ms=CUTOFF_MS - 40 * DAY_MS, endpoint="chat", status=200,
        account_id="acct_a",
    )  # fmt: skip
    await db.write(lambda conn: insert_usage(conn, late))
    report = await run_retention(db, archives, now_ms=NOW_MS)
    assert report.archives_written == ["usage-acct_a-2024-02-part2.jsonl.gz"]
    (part,) = [r for r in await recorded(db) if r["name"] == report.archives_written[0]]
    assert [row["request_id"] for row in archived_rows(archives, part)] == ["req_late"]
    assert await count(db, "SELECT COUNT(*) FROM usage WHERE request_id = 'req_late'") == 0


async def test_archives_older_than_two_years_are_deleted(db: Database, archives: Path) -> None:
    await run_retention(db, archives, now_ms=NOW_MS)
    names = [r["name"] for r in await recorded(db)]
    report = await run_retention(
        db, archives, now_ms=NOW_MS, policy=RetentionPolicy(archive_keep_days=30)
    )
    assert sorted(report.archives_expired) == sorted(names)
    assert await recorded(db) == []
    assert list(archives.iterdir()) == []


async def test_the_newest_audit_row_is_kept_to_continue_the_chain(
    db: Database, archives: Path
) -> None:
    await run_retention(db, archives, now_ms=NOW_MS + 1000 * DAY_MS)
    rows = await db.fetchall("SELECT id, hash FROM audit")
    assert [tuple(row) for row in rows] == [(120, "h119")]


async def test_the_daily_job_runs_with_an_injected_clock(db: Database, archives: Path) -> None:
    job = RetentionJob(db, archives, clock_ms=lambda: NOW_MS, first_run_after_s=0, interval_s=60)
    job.start()
    try:
        for _ in range(500):
            if job.last_report is not None:
                break
            await asyncio.sleep(0.01)
    finally:
        await job.stop()
    assert job.last_report is not None and job.last_report.usage_rows_archived > 0
    await job.stop()  # idempotent


async def test_audit_retention_is_configurable_apart_from_usage(
    db: Database, archives: Path
) -> None:
    """[retention] audit_days: audit rows older than it are archived, usage keeps its 90."""
    policy = RetentionPolicy(hot_days=90, audit_hot_days=30)
    await run_retention(db, archives, now_ms=NOW_MS, policy=policy)
    oldest_audit = await db.fetchone("SELECT MIN(ts_ms) FROM audit")
    assert oldest_audit is not None and oldest_audit[0] >= NOW_MS - 30 * DAY_MS - DAY_MS
    oldest_usage = await db.fetchone("SELECT MIN(ts_ms) FROM usage")
    assert oldest_usage is not None and oldest_usage[0] >= CUTOFF_MS - DAY_MS
    assert oldest_usage[0] < NOW_MS - 30 * DAY_MS  # usage younger than 90 days stays hot
    audit_archived = [r for r in await recorded(db) if r["kind"] == "audit"]
    assert sum(r["rows"] for r in audit_archived) > 0
