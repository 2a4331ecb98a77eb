"""Retention: move usage and audit rows older than 90 days into monthly archive files.

Archives are gzip-compressed JSON Lines (one object per row, every column), one file per
table, account and month, in a folder beside the database (``<database>.archives/``, e.g.
``relay.db.archives/``), each recorded in the ``archives`` table with its row count and
SHA-256. The ledger is never touched: it is kept forever (docs/architecture.md §3.2).

Each archive goes through steps that a crash can interrupt anywhere without losing or
duplicating a row:

1. pin the rows: ``account, month range below the cutoff, id <= MAX(id)`` (ids only grow
   and rows are never updated, so this set cannot change);
2. stream them into ``NAME.tmp``, fsync, rename to ``NAME``, fsync the folder;
3. record the archive (with that predicate) in one committed write;
4. delete the rows in batches of ``batch_rows``, one short write transaction each, and
   mark the archive ``purged`` with the last batch.

A run first removes files no record knows (a crash between 2 and 3: the rows are still
hot and are archived again) and finishes every unpurged archive (a crash during 4).
Later rows of an already archived account and month go to a new part file
(``...-2024-05-part2.jsonl.gz``). Archives older than two years are deleted. The newest
audit row is always kept, so the hash chain continues from it instead of restarting.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from relay.config import RetentionConfig
from relay.jobs.periodic import PeriodicTask
from relay.money.invoices import month_bounds
from relay.storage.db import Database
from relay.storage.files import make_private_dir, secure_existing
from relay.usage.archive_months import Kind, archive_base_name, month_of, month_ranges
from relay.usage.archives import publish, write_jsonl_gz
from relay.usage.queries import DAY_MS, RowRange, count_rows

__all__ = [
    "ARCHIVE_SUFFIX",
    "ArchiveRecord",
    "RetentionJob",
    "RetentionPolicy",
    "RetentionReport",
    "archive_base_name",
    "archive_dir_for",
    "month_of",
    "month_ranges",
    "run_retention",
]

log = logging.getLogger(__name__)

ARCHIVE_SUFFIX = ".jsonl.gz"
_ARCHIVE_NAME = re.compile(r"^(usage|audit)-[A-Za-z0-9_-]+\.jsonl\.gz$")
_KINDS: tuple[Kind, ...] = ("usage", "audit")


def archive_dir_for(database: Path) -> Path:
    """Where a database's archives live: ``<database>.archives/`` beside it."""
    return database.with_name(database.name + ".archives")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    hot_days: int = 90  # usage rows
    archive_keep_days: int = 730
    batch_rows: int = 5000
    # Audit rows: the privacy policy's 90 days by default ([retention] audit_days).
    audit_hot_days: int = 90

    @classmethod
    def of(cls, keep: RetentionConfig) -> RetentionPolicy:
        """The ``[retention]`` section's policy."""
        return cls(
            hot_days=keep.usage_days,
            audit_hot_days=keep.audit_days,
            archive_keep_days=keep.archive_keep_days,
        )

    def cutoff_ms(self, kind: Kind, now_ms: int) -> int:
        days = self.audit_hot_days if kind == "audit" else self.hot_days
        return now_ms - days * DAY_MS


class ArchiveRecord(msgspec.Struct):
    name: str
    kind: Kind
    account_id: str | None
    month: str
    rows: int
    bytes: int
    sha256: str
    created_at_ms: int
    from_ms: int
    until_ms: int
    max_id: int
    purged: bool = False

    def row_range(self) -> RowRange:
        return RowRange(
            self.kind,
            self.from_ms,
            self.until_ms,
            account_id=self.account_id,
            any_account=self.kind == "audit",
            max_id=self.max_id,
        )


class RetentionReport(msgspec.Struct):
    usage_rows_archived: int = 0
    audit_rows_archived: int = 0
    usage_rows_deleted: int = 0
    audit_rows_deleted: int = 0
    archives_written: list[str] = msgspec.field(default_factory=list)
    archives_expired: list[str] = msgspec.field(default_factory=list)
    orphans_removed: list[str] = msgspec.field(default_factory=list)
    # Sent alert outbox rows past what the re-arm check reads (the job's ``prune_outbox``).
    alert_rows_deleted: int = 0


async def run_retention(
    db: Database,
    archive_dir: Path,
    *,
    now_ms: int,
    policy: RetentionPolicy | None = None,
) -> RetentionReport:
    """One pass: recover, archive and purge old rows, expire old archives. Not reentrant."""
    policy = policy or RetentionPolicy()
    report = RetentionReport()
    # relay's own folder: 0700 even if an older relay made it open (its files then are too).
    await asyncio.to_thread(make_private_dir, archive_dir)
    await asyncio.to_thread(secure_existing, archive_dir)
    await _remove_orphans(db, archive_dir, report)
    for record in await _unpurged(db):
        await _finish_purge(db, archive_dir, record, policy, report)
    for kind in _KINDS:
        for rows in await _ranges_to_archive(db, kind, policy.cutoff_ms(kind, now_ms)):
            written = await _write_archive(db, archive_dir, rows, now_ms)
            if written is None:
                continue
            report.archives_written.append(written.name)
            if kind == "usage":
                report.usage_rows_archived += written.rows
            else:
                report.audit_rows_archived += written.rows
            await _finish_purge(db, archive_dir, written, policy, report)
    await _expire_archives(db, archive_dir, now_ms - policy.archive_keep_days * DAY_MS, report)
    return report


# --- what to archive -----------------------------------------------------------------------


async def _ranges_to_archive(db: Database, kind: Kind, cutoff_ms: int) -> list[RowRange]:
    # Both are single index lookups (MIN over usage_ts / audit_ts, MAX over the rowid).
    bounds = await db.fetchone(f"SELECT MIN(ts_ms), MAX(id) FROM {kind}")
    if bounds is None or bounds[0] is None or bounds[0] >= cutoff_ms:
        return []
    oldest_ms, max_id = int(bounds[0]), int(bounds[1])
    if kind == "audit":
        max_id -= 1  # keep the chain's last row: new rows link to it
    ranges: list[RowRange] = []
    for month in month_ranges(kind, oldest_ms, cutoff_ms, max_id):
        ranges.extend(await _split_by_account(db, month))
    return ranges


async def _split_by_account(db: Database, month: RowRange) -> list[RowRange]:
    if month.table == "audit":
        return [month]
    where, params = month.where()
    accounts = await db.fetchall(f"SELECT DISTINCT account_id FROM usage WHERE {where}", params)
    return [
        RowRange(
            "usage",
            month.start_ms,
            month.end_ms,
            account_id=row[0],
            any_account=False,
            max_id=month.max_id,
        )
        for row in accounts
    ]


async def _free_name(db: Database, rows: RowRange) -> str:
    base = archive_base_name(rows)
    part = 1
    while True:
        name = base + (f"-part{part}" if part > 1 else "") + ARCHIVE_SUFFIX
        if await db.fetchone("SELECT 1 FROM archives WHERE name = ?", [name]) is None:
            return name
        part += 1


# --- writing an archive --------------------------------------------------------------------


async def _write_archive(
    db: Database, archive_dir: Path, rows: RowRange, now_ms: int
) -> ArchiveRecord | None:
    name = await _free_name(db, rows)
    path = archive_dir / name
    tmp = archive_dir / (name + ".tmp")
    count = await write_jsonl_gz(db, rows, tmp)
    if count == 0:
        await asyncio.to_thread(tmp.unlink, missing_ok=True)
        return None
    digest, size = await asyncio.to_thread(publish, tmp, path)
    record = ArchiveRecord(
        name=name,
        kind=rows.table,
        account_id=rows.account_id,
        month=month_of(rows.start_ms),
        rows=count,
        bytes=size,
        sha256=digest,
        created_at_ms=now_ms,
        from_ms=rows.start_ms,
        until_ms=rows.end_ms,
        max_id=rows.max_id or 0,
    )
    await db.write(lambda conn: _insert_record(conn, record))
    return record


def _insert_record(conn: sqlite3.Connection, record: ArchiveRecord) -> None:
    fields = msgspec.structs.asdict(record)
    columns = ", ".join(fields)
    marks = ", ".join("?" for _ in fields)
    conn.execute(f"INSERT INTO archives ({columns}) VALUES ({marks})", list(fields.values()))


# --- deleting archived rows ----------------------------------------------------------------


async def _unpurged(db: Database) -> list[ArchiveRecord]:
    rows = await db.fetchall("SELECT * FROM archives WHERE purged = 0 ORDER BY created_at_ms")
    return [msgspec.convert(dict(row), ArchiveRecord, strict=False) for row in rows]


async def _finish_purge(
    db: Database,
    archive_dir: Path,
    record: ArchiveRecord,
    policy: RetentionPolicy,
    report: RetentionReport,
) -> None:
    rows = record.row_range()
    if not await asyncio.to_thread((archive_dir / record.name).is_file):
        # The file is gone before its rows were deleted: keep the rows, forget the file.
        log.error("archive %s is missing; its rows stay in the hot table", record.name)
        await db.write(_forget_archive(record.name))
        return
    remaining = await count_rows(db, rows)
    if remaining > record.rows:
        log.error("archive %s holds fewer rows than it would delete; not deleting", record.name)
        return
    where, params = rows.where()
    sql = (
        f"DELETE FROM {rows.table} WHERE id IN (SELECT id FROM {rows.table} WHERE {where} LIMIT ?)"
    )

    def delete_batch(conn: sqlite3.Connection) -> int:
        deleted = conn.execute(sql, [*params, policy.batch_rows]).rowcount
        if deleted < policy.batch_rows:
            conn.execute("UPDATE archives SET purged = 1 WHERE name = ?", [record.name])
        return deleted

    while True:
        deleted = await db.write(delete_batch)
        if record.kind == "usage":
            report.usage_rows_deleted += deleted
        else:
            report.audit_rows_deleted += deleted
        if deleted < policy.batch_rows:
            return
        await asyncio.sleep(0)  # let queued writes in between batches


def _forget_archive(name: str) -> Callable[[sqlite3.Connection], None]:
    def forget(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM archives WHERE name = ?", [name])

    return forget


# --- housekeeping of the folder ------------------------------------------------------------


async def _remove_orphans(db: Database, archive_dir: Path, report: RetentionReport) -> None:
    """Delete temp files and archive files no record knows (left by a crash)."""
    known = {row[0] for row in await db.fetchall("SELECT name FROM archives")}
    for path in await asyncio.to_thread(lambda: sorted(archive_dir.iterdir())):
        orphan = path.name.endswith(".tmp") or (
            _ARCHIVE_NAME.match(path.name) is not None and path.name not in known
        )
        if orphan and path.is_file():
            await asyncio.to_thread(path.unlink, missing_ok=True)
            report.orphans_removed.append(path.name)


async def _expire_archives(
    db: Database, archive_dir: Path, keep_from_ms: int, report: RetentionReport
) -> None:
    rows = await db.fetchall("SELECT name, month FROM archives WHERE purged = 1 ORDER BY name")
    for name, month in ((str(row[0]), str(row[1])) for row in rows):
        if month_bounds(month)[1] > keep_from_ms:
            continue
        # Record first: a crash before the unlink leaves an orphan the next run removes.
        await db.write(_forget_archive(name))
        await asyncio.to_thread((archive_dir / name).unlink, missing_ok=True)
        report.archives_expired.append(name)


# --- the daily job -------------------------------------------------------------------------


@dataclass
class RetentionJob:
    """Runs ``run_retention`` once a day in the server process; ``start()`` / ``stop()``.

    ``prune_outbox(now_ms)``: the alert outbox's pruning (``AlertOutbox.prune``), run after
    each pass; it returns how many rows it deleted."""

    db: Database
    archive_dir: Path
    policy: RetentionPolicy = field(default_factory=RetentionPolicy)
    clock_ms: Callable[[], int] = _now_ms
    interval_s: float = 86_400.0
    first_run_after_s: float = 300.0  # not during start-up, when traffic resumes
    prune_outbox: Callable[[int], Awaitable[int]] | None = None
    last_report: RetentionReport | None = field(default=None, init=False)
    _periodic: PeriodicTask | None = field(default=None, init=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    def start(self) -> None:
        if self._periodic is None:
            self._periodic = PeriodicTask(
                "relay-retention",
                self._logged_run,
                interval_s=self.interval_s,
                first_after_s=self.first_run_after_s,
                log=log,
            )
        self._periodic.start()

    async def stop(self) -> None:
        """Cancel the loop; an interrupted run is finished by the next one (crash-safe)."""
        if self._periodic is not None:
            await self._periodic.stop()

    async def run_once(self) -> RetentionReport:
        async with self._lock:
            now_ms = self.clock_ms()
            report = await run_retention(
                self.db, self.archive_dir, now_ms=now_ms, policy=self.policy
            )
            if self.prune_outbox is not None:
                report.alert_rows_deleted = await self.prune_outbox(now_ms)
        self.last_report = report
        return report

    async def _logged_run(self) -> None:
        report = await self.run_once()
        log.info(
            "retention: archived %d usage and %d audit rows into %d files; pruned %d sent alerts",
            report.usage_rows_archived,
            report.audit_rows_archived,
            len(report.archives_written),
            report.alert_rows_deleted,
        )
