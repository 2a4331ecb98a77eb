"""The streamed account export (relay.identity.export) on the embedded engine.

The same bytes as the export built whole before (tests/export_reference.py) over the same
records, whatever the page size; every read a bounded page and memory bounded over many
rows; a storage failure mid-way ends the body without the zip's central directory (and
without an audit row); a failure before the first byte is an ordinary error answer; a
complete export is audited exactly once.
"""

from __future__ import annotations

import copy
import io
import sqlite3
import time
import tracemalloc
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from export_reference import reference_export
from support_payments import PaymentsRelay, payments_config, run_payments_relay
from test_data_rights import _busy_account

from relay.admin import payments as admin_payments
from relay.csv_cells import csv_text
from relay.identity import export
from relay.identity.account_records import AccountRecords, SqliteAccountRecords
from relay.storage.reader import RowReader
from relay.usage.log import UsageRecord, insert_usage
from relay.usage.queries import DAY_MS
from relay.usage.retention import archive_dir_for, run_retention

NOW_MS = 1_780_000_000_123


def _records(p: PaymentsRelay) -> SqliteAccountRecords:
    state = p.relay.state
    return SqliteAccountRecords(
        state.db, state.store.audit_key, archive_dir_for(state.config.database_path)
    )


async def _archived_rows(p: PaymentsRelay, account_id: str, count: int) -> str:
    """``count`` usage rows 200 days old, moved into a monthly archive file; its name."""
    now = int(time.time() * 1000)

    def seed(conn: sqlite3.Connection) -> None:
        for i in range(count):
            record = UsageRecord(
                f"req_old_{i}", now - 200 * DAY_MS + i, "chat", 200, account_id=account_id
            )
            insert_usage(conn, record)

    await p.relay.state.db.write(seed)
    folder = archive_dir_for(p.relay.state.config.database_path)
    report = await run_retention(p.relay.state.db, folder, now_ms=now)
    [name] = [n for n in report.archives_written if n.startswith("usage-")]
    return name


async def _many_usage_rows(p: PaymentsRelay, account_id: str, count: int) -> None:
    note = "a fairly long upstream request id to give each row some weight " * 2

    def seed(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT INTO usage (request_id, ts_ms, endpoint, status, account_id, model, "
            "upstream_request_id, prompt_tokens, cost_micros) "
            "VALUES (?, ?, 'chat', 200, ?, 'mock-gpt', ?, ?, ?)",
            [
                (f"req_bulk_{i}", NOW_MS - i, account_id, f"{note}{i}", i % 97, i % 13)
                for i in range(count)
            ],
        )

    await p.relay.state.db.write(seed)


async def _streamed(
    records: AccountRecords, p: PaymentsRelay, account_id: str, **kwargs: Any
) -> tuple[bytes, int]:
    """The streamed export's bytes and how often ``record_export`` ran."""
    audited = 0

    async def record_export() -> None:
        nonlocal audited
        audited += 1

    account = p.relay.state.store.account(account_id)
    pieces = export.stream_export(
        records, account, record_export=record_export, now_ms=NOW_MS, **kwargs
    )
    return b"".join([piece async for piece in pieces]), audited


async def test_the_streamed_export_is_the_whole_builders_bytes_at_every_page_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with run_payments_relay(payments_config(tmp_path), monkeypatch) as p:
        account_id, _, _ = await _busy_account(p)
        archive_name = await _archived_rows(p, account_id, 3)
        await _many_usage_rows(p, account_id, 7)
        records = _records(p)
        store = p.relay.state.store
        old = await reference_export(
            records, store, account_id, now_ms=NOW_MS, monkeypatch=monkeypatch
        )
        for page_rows in (1, 2, 3, export.PAGE_ROWS):
            streamed, audited = await _streamed(records, p, account_id, page_rows=page_rows)
            assert streamed == old, page_rows
            assert audited == 1
        with zipfile.ZipFile(io.BytesIO(old)) as archive:
            names = archive.namelist()
            assert len(msgspec.json.decode(archive.read("usage.json"))) == 1 + 7
            assert f"archives/{archive_name}" in names and names[-1] == "README.txt"
            assert archive.read("members.csv").startswith(b"user_id,email,")


def test_a_parts_json_and_csv_written_in_pages_are_the_whole_lists_bytes() -> None:
    rows = [
        {"id": 1, "note": "two\nlines", "amount_micros": -5, "label": "=SUM(A1)"},
        {"id": 2, "note": None, "amount_micros": 0, "label": 'a "quoted", cell'},
        {"id": 3, "note": "é ü ✓", "amount_micros": 10**15, "label": ""},
    ]
    for split in range(len(rows) + 1):
        files = export._PartFiles()
        files.add(rows[:split])
        files.add(rows[split:])
        files.close_json()
        try:
            for spool in (files.json, files.csv):
                spool.seek(0)
            assert files.json.read() == msgspec.json.format(msgspec.json.encode(rows))
            columns = list(rows[0])
            whole = csv_text([columns, *([row[c] for c in columns] for row in rows)])
            assert files.csv.read() == whole.encode()
        finally:
            files.close()
    empty = export._PartFiles()
    empty.add([])
    empty.close_json()
    empty.json.seek(0)
    empty.csv.seek(0)
    assert (empty.json.read(), empty.csv.read()) == (b"[]", b"")
    empty.close()


class _RecordingReader:
    """The engine's reader, counting the rows each query answered and the LIMIT it asked."""

    def __init__(self, inner: RowReader) -> None:
        self.inner = inner
        self.pages: list[tuple[str, int, int]] = []  # (query start, rows, limit)

    async def fetchall(self, sql: str, params: Any = ()) -> list[Any]:
        rows = await self.inner.fetchall(sql, params)
        if "LIMIT ?" in sql:
            self.pages.append((sql.split(" FROM ")[1][:20], len(rows), int(params[-1])))
        return rows

    async def fetchone(self, sql: str, params: Any = ()) -> Any:
        return await self.inner.fetchone(sql, params)


def _recorded(inner: SqliteAccountRecords, reader: _RecordingReader) -> SqliteAccountRecords:
    """``inner`` reading through ``reader`` (its profile reads and pages alike)."""
    records = copy.copy(inner)
    records._db = reader  # type: ignore[assignment]
    return records


async def test_every_read_is_a_bounded_page_and_memory_stays_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with run_payments_relay(payments_config(tmp_path), monkeypatch) as p:
        account_id, _, _ = await _busy_account(p)
        rows = 30_000
        await _many_usage_rows(p, account_id, rows)
        reader = _RecordingReader(p.relay.state.db)
        records = _recorded(_records(p), reader)
        streamed, _ = await _streamed(records, p, account_id, page_rows=250)
        assert reader.pages and all(count <= limit == 250 for _, count, limit in reader.pages)
        usage_pages = [count for start, count, _ in reader.pages if start.startswith("usage")]
        assert sum(usage_pages) == rows + 1 and len(usage_pages) == (rows + 1) // 250 + 1
        with zipfile.ZipFile(io.BytesIO(streamed)) as archive:
            usage_json = archive.getinfo("usage.json").file_size
            assert len(msgspec.json.decode(archive.read("usage.json"))) == rows + 1
        del streamed

        # The whole export is consumed piece by piece and dropped: what it holds at once is
        # its page, its spools' in-memory part and one piece, not the account's data.
        async def drain(pieces: AsyncIterator[bytes]) -> int:
            total = 0
            async for piece in pieces:
                total += len(piece)
            return total

        async def nothing() -> None:
            return None

        account = p.relay.state.store.account(account_id)
        tracemalloc.start()
        try:
            total = await drain(
                export.stream_export(_records(p), account, record_export=nothing, page_rows=250)
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert usage_json > 15_000_000 and total > 500_000
        assert peak < 6_000_000, f"peak {peak} bytes for a {usage_json}-byte usage.json"


class _FailingReader(_RecordingReader):
    """Fails the ``fail_at``-th query (1-based): the database going away mid-export."""

    def __init__(self, inner: RowReader, fail_at: int) -> None:
        super().__init__(inner)
        self.calls = 0
        self.fail_at = fail_at

    def _tick(self) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise sqlite3.OperationalError("disk I/O error (injected)")

    async def fetchall(self, sql: str, params: Any = ()) -> list[Any]:
        self._tick()
        return await super().fetchall(sql, params)

    async def fetchone(self, sql: str, params: Any = ()) -> Any:
        self._tick()
        return await super().fetchone(sql, params)


async def _exports_audited(p: PaymentsRelay, account_id: str) -> int:
    return sum(
        1
        for row in await p.relay.audit()
        if row["action"] == "account.export" and row["target"] == account_id
    )


async def test_a_storage_failure_mid_export_leaves_a_visibly_truncated_unaudited_body(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with run_payments_relay(payments_config(tmp_path), monkeypatch) as p:
        account_id, _, _ = await _busy_account(p)
        await _many_usage_rows(p, account_id, 3_000)
        state = p.relay.state
        real_records = admin_payments.account_records

        def failing_at(n: int) -> Any:
            def records(s: Any) -> AccountRecords:
                inner = real_records(s)
                assert isinstance(inner, SqliteAccountRecords)
                return _recorded(inner, _FailingReader(state.db, n))

            return records

        # The 4th query is usage's first page: the profile and keys are out already.
        monkeypatch.setattr(admin_payments, "account_records", failing_at(4))
        received = bytearray()
        with pytest.raises(httpx.RemoteProtocolError):
            async with p.relay.client.stream(
                "GET", f"/admin/accounts/{account_id}/export"
            ) as response:
                assert response.status_code == 200
                async for piece in response.aiter_raw():
                    received += piece
        assert received.startswith(b"PK\x03\x04")  # the first entries arrived
        with pytest.raises(zipfile.BadZipFile):
            zipfile.ZipFile(io.BytesIO(bytes(received)))
        assert await _exports_audited(p, account_id) == 0

        # A failure before the first byte (the profile's reads) is an ordinary error answer.
        monkeypatch.setattr(admin_payments, "account_records", failing_at(1))
        refused = await p.relay.client.get(f"/admin/accounts/{account_id}/export")
        assert refused.status_code == 500
        assert refused.json()["error"]["code"] == "internal_error"
        assert await _exports_audited(p, account_id) == 0

        # Storage back: a complete export, audited exactly once.
        monkeypatch.setattr(admin_payments, "account_records", real_records)
        complete = await p.relay.client.get(f"/admin/accounts/{account_id}/export")
        assert complete.status_code == 200
        with zipfile.ZipFile(io.BytesIO(complete.content)) as archive:
            assert archive.testzip() is None
            assert len(msgspec.json.decode(archive.read("usage.json"))) == 3_001
        assert await _exports_audited(p, account_id) == 1
        report = (await p.relay.client.get("/admin/audit/verify")).json()
        assert report["ok"], report
