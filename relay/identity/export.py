"""An account's data as a zip, streamed: everything relay holds on it, in bounded memory.

One zip with ``profile.json``, then per part (keys' metadata, usage, ledger, payments,
receipts, members and tickets when the console's tables exist) ``<part>.json`` and
``<part>.csv``, the account's monthly usage archives under ``archives/`` (rows older than
the retention period live only there) and ``README.txt``. Key hashes, key secrets,
password hashes and the admin token are never read, so they cannot leak: every query
names its columns.

Streamed: each part is read in keyset pages of ``PAGE_ROWS`` (by its order columns, the
last one unique), written to spooled temporary files as JSON and CSV in one pass (so both
files show the same rows), and added to the zip once read (``relay.storage.zip_stream``); archives
are read a chunk at a time. Memory stays bounded whatever the account's size; temporary
disk holds at most the part being written. The bytes are those of the export built whole
in memory before (``tests/export_reference.py`` keeps that builder to compare with).

Complete or visibly not: the export is audited (``record_export``) just before the zip's
central directory, its last bytes. A storage failure mid-way ends the body without them (a
zip reader refuses it; over HTTP/1.1 the chunked body also lacks its last chunk), and an
export that never completed is not audited. A failure before the first byte (the profile's
reads) is an ordinary error answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import IO, Any, NamedTuple

import msgspec

from relay.csv_cells import csv_text
from relay.identity.account_records import AccountRecords, DeletionRequest
from relay.identity.accounts import Account
from relay.storage.zip_stream import ZipStream, new_spool

__all__ = ["EXPORT_PARTS", "PAGE_ROWS", "ExportPart", "stream_export"]

PAGE_ROWS = 500
_KEY = "export_page_key_"  # the keyset columns' aliases, dropped from the rows written


class ExportPart(NamedTuple):
    stem: str  # file name without its extension
    table: str  # must exist (the console's tables exist only once it ran)
    columns: str  # the SELECT list, in the file's column order
    source: str  # FROM … WHERE, with one ? for the account id
    order: tuple[str, ...]  # the ORDER BY columns; the last makes the order unique


EXPORT_PARTS: tuple[ExportPart, ...] = (
    ExportPart(
        "keys",
        "api_keys",
        "id, label, last4, models, endpoints, spend_cap_micros, rpm, tpm, concurrency, "
        "price_multiplier, expires_at_ms, status, created_at_ms, updated_at_ms, last_used_at_ms",
        "FROM api_keys WHERE account_id = ?",
        ("created_at_ms", "id"),
    ),
    ExportPart(
        "usage",
        "usage",
        "request_id, ts_ms, key_id, endpoint, model, provider, upstream_model, "
        "upstream_request_id, status, error_code, stream, prompt_tokens, completion_tokens, "
        "cached_tokens, cache_write_tokens, units, cost_micros, usage_estimated, latency_ms, "
        "ttfb_ms",
        "FROM usage WHERE account_id = ?",
        ("id",),
    ),
    ExportPart(
        "ledger",
        "ledger",
        "id, kind, amount_micros, reference, key_id, request_id, note, created_at_ms",
        "FROM ledger WHERE account_id = ?",
        ("id",),
    ),
    ExportPart(
        "payments",
        "payments",
        "id, provider, provider_payment_id, kind, amount_micros, currency, amount_minor, "
        "status, created_at_ms, updated_at_ms, receipt_number, failure_reason",
        "FROM payments WHERE account_id = ?",
        ("created_at_ms", "id"),
    ),
    ExportPart(
        "receipts",
        "receipts",
        "number, payment_id, buyer_name, provider, payment_reference, amount_micros, "
        "currency, amount_minor, seller_name, seller_address, seller_tax_id, issued_at_ms",
        "FROM receipts WHERE account_id = ?",
        ("year", "seq"),
    ),
    ExportPart(
        "members",
        "console_memberships",
        "u.id AS user_id, u.email, u.display_name, m.role, m.created_at_ms",
        "FROM console_memberships m JOIN console_users u ON u.id = m.user_id "
        "WHERE m.account_id = ?",
        ("m.created_at_ms", "m.user_id"),
    ),
    ExportPart(
        "tickets",
        "console_tickets",
        "id, opened_by, subject, status, request_id, payment_reference, created_at_ms, "
        "updated_at_ms",
        "FROM console_tickets WHERE account_id = ?",
        ("id",),
    ),
    ExportPart(
        "ticket_messages",
        "console_ticket_messages",
        "m.id, m.ticket_id, m.author_id, m.from_operator, m.body, m.created_at_ms",
        "FROM console_ticket_messages m JOIN console_tickets t ON t.id = m.ticket_id "
        "WHERE t.account_id = ?",
        ("m.id",),
    ),
)

README = """relay account export
Amounts are integers in micro-units (*_micros: 1,000,000 = 1 USD); times are unix ms (UTC).
Keys are listed by metadata only: relay never stores a key's secret, only a hash.
"""


def page_query(part: ExportPart, *, first: bool) -> str:
    """One keyset page of ``part``: params (account id, [the last row's keys…], limit)."""
    keys = ", ".join(f"{column} AS {_KEY}{n}" for n, column in enumerate(part.order))
    order = ", ".join(part.order)
    after = ""
    if not first:
        marks = ", ".join("?" for _ in part.order)
        after = f" AND ({order}) > ({marks})" if len(part.order) > 1 else f" AND {order} > ?"
    return f"SELECT {part.columns}, {keys} {part.source}{after} ORDER BY {order} LIMIT ?"


class _PartFiles:
    """One part's ``.json`` and ``.csv`` content, written a page at a time: the bytes of
    ``msgspec.json.format`` over the whole list and of ``csv_text`` over every row."""

    def __init__(self) -> None:
        self.json = new_spool()
        self.csv = new_spool()
        self._rows = 0

    def add(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            body = msgspec.json.format(msgspec.json.encode(row))
            self.json.write(b",\n  " if self._rows else b"[\n  ")
            self.json.write(body.replace(b"\n", b"\n  "))
            self._rows += 1
        lines = [[row.get(column, "") for column in rows[0]] for row in rows] if rows else []
        if rows and self.csv.tell() == 0:
            lines.insert(0, list(rows[0]))
        self.csv.write(csv_text(lines).encode())

    def close_json(self) -> None:
        self.json.write(b"\n]" if self._rows else b"[]")

    def close(self) -> None:
        self.json.close()
        self.csv.close()


async def _read_part(
    records: AccountRecords, part: ExportPart, account_id: str, page_rows: int
) -> _PartFiles:
    files = _PartFiles()
    try:
        after: tuple[Any, ...] | None = None
        while True:
            params = (account_id, *(after or ()), page_rows)
            query = page_query(part, first=after is None)
            page = [dict(row) for row in await records.reader.fetchall(query, params)]
            if page:
                after = tuple(page[-1][f"{_KEY}{n}"] for n in range(len(part.order)))
                for row in page:
                    for n in range(len(part.order)):
                        del row[f"{_KEY}{n}"]
                files.add(page)
            if len(page) < page_rows:
                files.close_json()
                return files
    except BaseException:
        files.close()
        raise


def _profile(account: Account, deletion: DeletionRequest | None, now_ms: int) -> bytes:
    profile = msgspec.structs.asdict(account)
    profile["deletion_request"] = msgspec.structs.asdict(deletion) if deletion else None
    profile["exported_at_ms"] = now_ms
    return msgspec.json.format(msgspec.json.encode(profile))


async def stream_export(
    records: AccountRecords,
    account: Account,
    *,
    record_export: Callable[[], Awaitable[None]],
    now_ms: int | None = None,
    page_rows: int = PAGE_ROWS,
) -> AsyncIterator[bytes]:
    """The account's export as a zip, piece by piece; ``record_export`` (the audit row)
    is awaited once, before the last piece, and only when every read succeeded."""
    exported_at = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    deletion = await records.deletion_request(account.id)
    tables = await records.tables()
    archive = ZipStream(date_time=time.localtime(exported_at / 1000)[:6])
    try:
        archive.add_bytes("profile.json", _profile(account, deletion, exported_at))
        for chunk in archive.take():
            yield chunk
        for part in EXPORT_PARTS:
            if part.table not in tables:
                continue
            files = await _read_part(records, part, account.id, page_rows)
            try:
                await asyncio.to_thread(archive.add_spooled, f"{part.stem}.json", files.json)
                for chunk in archive.take():
                    yield chunk
                await asyncio.to_thread(archive.add_spooled, f"{part.stem}.csv", files.csv)
                for chunk in archive.take():
                    yield chunk
            finally:
                files.close()
        for name in await records.usage_archive_names(account.id):
            async for chunk in _archive_entry(records, archive, name):
                yield chunk
        archive.add_bytes("README.txt", README.encode())
        await record_export()
        for chunk in archive.finish():
            yield chunk
    finally:
        archive.close()


async def _archive_entry(
    records: AccountRecords, archive: ZipStream, name: str
) -> AsyncIterator[bytes]:
    """One usage archive (already gzip: stored as is), its bytes spooled a chunk at a time."""
    spool: IO[bytes] = new_spool()
    try:
        async for data in records.usage_archive_chunks(name):
            spool.write(data)
        await asyncio.to_thread(archive.add_spooled, f"archives/{name}", spool, stored=True)
    finally:
        spool.close()
    for chunk in archive.take():
        yield chunk
