"""Retention on PostgreSQL: usage and audit rows past 90 days into monthly archives kept in
PostgreSQL, run by the cluster's elected job runner.

The embedded rules (``relay.usage.retention``): one archive per table, account and month
(the audit chain's newest row always stays hot), gzip JSON Lines of every column, recorded
in ``archives`` with its row count and SHA-256; rows deleted in batches only after their
archive is committed; archives older than ``archive_keep_days`` expire; later rows of an
archived month go to a ``-partN`` archive. The names, ranges and policy are shared.

What differs is where the file goes: its bytes are ``archive_chunks`` rows (1 MiB each,
``relay.storage.schema_cluster_jobs``) written in the SAME transaction as its ``archives`` row.
So N instances need no shared disk (any instance serves any archive), and an archive
exists whole or not at all without a temporary file, rename, fsync or orphan sweep; a crash
during the batched deletes is finished by the next run, as embedded. Expiry deletes the
record and, by cascade, its bytes in one statement.

The daily rollup stays whole: a run first catches the rollup up (``relay.cluster.pg_rollup``)
and archives and deletes only usage rows it has counted; rows above its mark (a rollup
that could not take its horizon) stay hot until a later run.

Every statement of a run goes through ONE connection that holds a session advisory lock
(``RETENTION_LOCK``) for the run: a second run anywhere (a runner elected while the
previous one's connection was dying) skips; and if the connection dies, its lock and its
uncommitted work die together, so two runs never archive the same rows twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import msgspec

from relay.cluster.pg_rollup import catch_up, rolled_through
from relay.money.invoices import month_bounds
from relay.storage.schema_cluster_jobs import ARCHIVE_CHUNK_BYTES
from relay.usage.queries import DAY_MS, RowRange
from relay.usage.retention import (
    ARCHIVE_SUFFIX,
    ArchiveRecord,
    RetentionPolicy,
    RetentionReport,
    archive_base_name,
    month_of,
    month_ranges,
)

__all__ = ["RETENTION_LOCK", "PgRetentionJob", "run_pg_retention"]

log = logging.getLogger(__name__)

# Any constant shared by every instance (migrations +0, lease reaper +1, job runner +2).
RETENTION_LOCK = 0x72656C6179 + 3
_PAGE_ROWS = 1000
_encode = msgspec.json.Encoder().encode


class _NothingToArchive(Exception):
    """The range emptied since it was read: roll the archive's transaction back."""


async def run_pg_retention(
    pool: Any, *, now_ms: int, policy: RetentionPolicy | None = None
) -> RetentionReport | None:
    """One pass (see the module docstring); None when another run holds the lock."""
    policy = policy or RetentionPolicy()
    report = RetentionReport()
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_LOCK):
            return None
        try:
            # Rows leave the hot table only once counted in usage_daily (pg_rollup).
            await catch_up(conn, batch_rows=policy.batch_rows)
            for record in await _unpurged(conn):
                await _finish_purge(conn, record, policy, report)
            for kind in ("usage", "audit"):
                for rows in await _ranges_to_archive(conn, kind, policy.cutoff_ms(kind, now_ms)):
                    written = await _write_archive(conn, rows, now_ms)
                    if written is None:
                        continue
                    report.archives_written.append(written.name)
                    if kind == "usage":
                        report.usage_rows_archived += written.rows
                    else:
                        report.audit_rows_archived += written.rows
                    await _finish_purge(conn, written, policy, report)
            keep_from_ms = now_ms - policy.archive_keep_days * DAY_MS
            await _expire_archives(conn, keep_from_ms, report)
        finally:
            if not conn.is_closed():
                await conn.execute("SELECT pg_advisory_unlock($1)", RETENTION_LOCK)
    return report


def _where(rows: RowRange, params: list[Any]) -> str:
    """``RowRange.where`` in PostgreSQL's placeholders, appending to ``params``."""

    def arg(value: Any) -> str:
        params.append(value)
        return f"${len(params)}"

    clauses = [f"ts_ms >= {arg(rows.start_ms)}", f"ts_ms < {arg(rows.end_ms)}"]
    if not rows.any_account:
        # Spelled for the (account_id, ...) indexes: IS NOT DISTINCT FROM would not use them.
        clauses.append(
            "account_id IS NULL"
            if rows.account_id is None
            else f"account_id = {arg(rows.account_id)}"
        )
    if rows.max_id is not None:
        clauses.append(f"id <= {arg(rows.max_id)}")
    return " AND ".join(clauses)


# --- what to archive -----------------------------------------------------------------------


async def _ranges_to_archive(conn: Any, kind: str, cutoff_ms: int) -> list[RowRange]:
    # Below the cutoff only: the usage BRIN index skips every block of recent rows.
    oldest = await conn.fetchval(f"SELECT MIN(ts_ms) FROM {kind} WHERE ts_ms < $1", cutoff_ms)
    if oldest is None:
        return []
    max_id = int(await conn.fetchval(f"SELECT MAX(id) FROM {kind}"))
    if kind == "audit":
        max_id -= 1  # keep the chain's last row: new rows link to it
    else:
        # Archiving leaves usage_daily alone (as embedded): only rows it already counts go.
        max_id = min(max_id, await rolled_through(conn))
    ranges: list[RowRange] = []
    for month in month_ranges("usage" if kind == "usage" else "audit", oldest, cutoff_ms, max_id):
        if kind == "audit":
            ranges.append(month)
            continue
        params: list[Any] = []
        where = _where(month, params)
        accounts = await conn.fetch(f"SELECT DISTINCT account_id FROM usage WHERE {where}", *params)
        ranges.extend(
            replace(month, account_id=row["account_id"], any_account=False) for row in accounts
        )
    return ranges


async def _free_name(conn: Any, rows: RowRange) -> str:
    base = archive_base_name(rows)
    part = 1
    while True:
        name = base + (f"-part{part}" if part > 1 else "") + ARCHIVE_SUFFIX
        if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM archives WHERE name = $1)", name):
            return name
        part += 1


async def _pages(conn: Any, rows: RowRange) -> AsyncIterator[list[Any]]:
    """The rows in ``(ts_ms, id)`` order, a page at a time (keyset, as ``iter_pages``)."""
    cursor_ts, cursor_id = rows.start_ms, -1
    while True:
        params: list[Any] = []
        where = _where(replace(rows, start_ms=cursor_ts), params)
        n = len(params)
        page = await conn.fetch(
            f"SELECT * FROM {rows.table} WHERE {where}"
            f" AND NOT (ts_ms = ${n + 1} AND id <= ${n + 2}) ORDER BY ts_ms, id LIMIT ${n + 3}",
            *params,
            cursor_ts,
            cursor_id,
            _PAGE_ROWS,
        )
        if not page:
            return
        yield page
        if len(page) < _PAGE_ROWS:
            return
        cursor_ts, cursor_id = page[-1]["ts_ms"], page[-1]["id"]


# --- writing an archive --------------------------------------------------------------------


class _ChunkWriter:
    """gzip (mtime 0) into ``archive_chunks`` rows of ``ARCHIVE_CHUNK_BYTES``."""

    def __init__(self, conn: Any, name: str) -> None:
        self._conn = conn
        self._name = name
        self._packer = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: the gzip format
        self._pending = bytearray()
        self._digest = hashlib.sha256()
        self._seq = 0
        self.size = 0

    async def write(self, data: bytes) -> None:
        self._pending += await asyncio.to_thread(self._packer.compress, data)
        while len(self._pending) >= ARCHIVE_CHUNK_BYTES:
            await self._store(ARCHIVE_CHUNK_BYTES)

    async def close(self) -> str:
        self._pending += self._packer.flush()
        while self._pending:
            await self._store(ARCHIVE_CHUNK_BYTES)
        return self._digest.hexdigest()

    async def _store(self, limit: int) -> None:
        piece = bytes(self._pending[:limit])
        del self._pending[:limit]
        self._digest.update(piece)
        self.size += len(piece)
        await self._conn.execute(
            "INSERT INTO archive_chunks (name, seq, data) VALUES ($1, $2, $3)",
            self._name,
            self._seq,
            piece,
        )
        self._seq += 1


async def _write_archive(conn: Any, rows: RowRange, now_ms: int) -> ArchiveRecord | None:
    record = ArchiveRecord(
        name=await _free_name(conn, rows),
        kind="usage" if rows.table == "usage" else "audit",
        account_id=rows.account_id,
        month=month_of(rows.start_ms),
        rows=0,
        bytes=0,
        sha256="",
        created_at_ms=now_ms,
        from_ms=rows.start_ms,
        until_ms=rows.end_ms,
        max_id=rows.max_id or 0,
    )
    fields = msgspec.structs.asdict(record)
    fields["purged"] = 0
    columns = ", ".join(fields)
    marks = ", ".join(f"${i + 1}" for i in range(len(fields)))
    try:
        async with conn.transaction():  # the record and its bytes commit together
            await conn.execute(
                f"INSERT INTO archives ({columns}) VALUES ({marks})", *fields.values()
            )
            writer = _ChunkWriter(conn, record.name)
            async for page in _pages(conn, rows):
                await writer.write(b"".join(_encode(dict(row)) + b"\n" for row in page))
                record.rows += len(page)
            if record.rows == 0:
                raise _NothingToArchive
            record.sha256 = await writer.close()
            record.bytes = writer.size
            await conn.execute(
                "UPDATE archives SET rows = $2, bytes = $3, sha256 = $4 WHERE name = $1",
                record.name,
                record.rows,
                record.bytes,
                record.sha256,
            )
    except _NothingToArchive:
        return None
    return record


# --- deleting archived rows, expiring archives ----------------------------------------------


async def _unpurged(conn: Any) -> list[ArchiveRecord]:
    rows = await conn.fetch("SELECT * FROM archives WHERE purged = 0 ORDER BY created_at_ms")
    return [msgspec.convert(dict(row), ArchiveRecord, strict=False) for row in rows]


async def _finish_purge(
    conn: Any, record: ArchiveRecord, policy: RetentionPolicy, report: RetentionReport
) -> None:
    stored = "SELECT EXISTS (SELECT 1 FROM archive_chunks WHERE name = $1)"
    if not await conn.fetchval(stored, record.name):
        # A record without bytes (copied by `relay migrate`, whose files stayed on disk):
        # keep the rows hot and forget it; the next run archives them here.
        log.error("archive %s has no stored bytes; its rows stay in the hot table", record.name)
        await conn.execute("DELETE FROM archives WHERE name = $1", record.name)
        return
    rows = record.row_range()
    params: list[Any] = []
    where = _where(rows, params)
    remaining = await conn.fetchval(f"SELECT count(*) FROM {rows.table} WHERE {where}", *params)
    if remaining > record.rows:
        log.error("archive %s holds fewer rows than it would delete; not deleting", record.name)
        return
    delete = (
        f"DELETE FROM {rows.table} WHERE id IN"
        f" (SELECT id FROM {rows.table} WHERE {where} LIMIT ${len(params) + 1})"
    )
    while True:
        async with conn.transaction():  # one short transaction per batch
            deleted = int((await conn.execute(delete, *params, policy.batch_rows)).split()[-1])
            if deleted < policy.batch_rows:
                await conn.execute("UPDATE archives SET purged = 1 WHERE name = $1", record.name)
        if record.kind == "usage":
            report.usage_rows_deleted += deleted
        else:
            report.audit_rows_deleted += deleted
        if deleted < policy.batch_rows:
            return


async def _expire_archives(conn: Any, keep_from_ms: int, report: RetentionReport) -> None:
    rows = await conn.fetch("SELECT name, month FROM archives WHERE purged = 1 ORDER BY name")
    for row in rows:
        if month_bounds(str(row["month"]))[1] > keep_from_ms:
            continue
        await conn.execute("DELETE FROM archives WHERE name = $1", row["name"])  # + its chunks
        report.archives_expired.append(str(row["name"]))


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class PgRetentionJob:
    """The daily retention step the job runner calls (``run_once``); ``prune_outbox(now_ms)``
    as the embedded job's (``RetentionJob``), run by the instance that ran the pass."""

    def __init__(
        self,
        pool: Any,
        policy: RetentionPolicy,
        *,
        clock_ms: Callable[[], int] = _now_ms,
        prune_outbox: Callable[[int], Awaitable[int]] | None = None,
    ) -> None:
        self._pool = pool
        self.policy = policy
        self._clock_ms = clock_ms
        self._prune_outbox = prune_outbox
        self.last_report: RetentionReport | None = None

    async def run_once(self) -> RetentionReport | None:
        now_ms = self._clock_ms()
        report = await run_pg_retention(self._pool, now_ms=now_ms, policy=self.policy)
        if report is None:
            log.info("retention: another instance is running it")
            return None
        if self._prune_outbox is not None:
            report.alert_rows_deleted = await self._prune_outbox(now_ms)
        self.last_report = report
        log.info(
            "retention: archived %d usage and %d audit rows into %d archives;"
            " pruned %d sent alerts",
            report.usage_rows_archived,
            report.audit_rows_archived,
            len(report.archives_written),
            report.alert_rows_deleted,
        )
        return report
