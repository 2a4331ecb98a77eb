"""The account export as it was built before it was streamed: the whole zip in memory.

Kept (its queries and ``_zip`` as they were in relay/identity/data_rights.py) so the tests
can compare the streamed export (``relay.identity.export``) with it byte for byte over the
same records. Its only change: the archives come through the records' current seam
(names, then chunks), joined whole as the old ``usage_archives`` joined them.
"""

from __future__ import annotations

import io
import zipfile
from typing import Any

import msgspec

from relay.csv_cells import csv_text
from relay.identity.account_records import AccountRecords
from relay.identity.accounts import AccountStore

_EXPORT_QUERIES: tuple[tuple[str, str, str], ...] = (
    (
        "keys",
        "api_keys",
        "SELECT id, label, last4, models, endpoints, spend_cap_micros, rpm, tpm, concurrency, "
        "price_multiplier, expires_at_ms, status, created_at_ms, updated_at_ms, last_used_at_ms "
        "FROM api_keys WHERE account_id = ? ORDER BY created_at_ms",
    ),
    (
        "usage",
        "usage",
        "SELECT request_id, ts_ms, key_id, endpoint, model, provider, upstream_model, "
        "upstream_request_id, status, error_code, stream, prompt_tokens, completion_tokens, "
        "cached_tokens, cache_write_tokens, units, cost_micros, usage_estimated, latency_ms, "
        "ttfb_ms FROM usage WHERE account_id = ? ORDER BY id",
    ),
    (
        "ledger",
        "ledger",
        "SELECT id, kind, amount_micros, reference, key_id, request_id, note, created_at_ms "
        "FROM ledger WHERE account_id = ? ORDER BY id",
    ),
    (
        "payments",
        "payments",
        "SELECT id, provider, provider_payment_id, kind, amount_micros, currency, amount_minor, "
        "status, created_at_ms, updated_at_ms, receipt_number, failure_reason "
        "FROM payments WHERE account_id = ? ORDER BY created_at_ms",
    ),
    (
        "receipts",
        "receipts",
        "SELECT number, payment_id, buyer_name, provider, payment_reference, amount_micros, "
        "currency, amount_minor, seller_name, seller_address, seller_tax_id, issued_at_ms "
        "FROM receipts WHERE account_id = ? ORDER BY year, seq",
    ),
    (
        "members",
        "console_memberships",
        "SELECT u.id AS user_id, u.email, u.display_name, m.role, m.created_at_ms "
        "FROM console_memberships m JOIN console_users u ON u.id = m.user_id "
        "WHERE m.account_id = ? ORDER BY m.created_at_ms",
    ),
    (
        "tickets",
        "console_tickets",
        "SELECT id, opened_by, subject, status, request_id, payment_reference, created_at_ms, "
        "updated_at_ms FROM console_tickets WHERE account_id = ? ORDER BY id",
    ),
    (
        "ticket_messages",
        "console_ticket_messages",
        "SELECT m.id, m.ticket_id, m.author_id, m.from_operator, m.body, m.created_at_ms "
        "FROM console_ticket_messages m JOIN console_tickets t ON t.id = m.ticket_id "
        "WHERE t.account_id = ? ORDER BY m.id",
    ),
)

_README = """relay account export
Amounts are integers in micro-units (*_micros: 1,000,000 = 1 USD); times are unix ms (UTC).
Keys are listed by metadata only: relay never stores a key's secret, only a hash.
"""


async def reference_inputs(
    records: AccountRecords, store: AccountStore, account_id: str, *, now_ms: int
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]], list[tuple[str, bytes]]]:
    """What the old ``build_export`` read, before it zipped it (``reference_zip``)."""
    account = store.account(account_id)
    tables = await records.tables()
    parts: dict[str, list[dict[str, Any]]] = {}
    for stem, table, sql in _EXPORT_QUERIES:
        if table in tables:
            parts[stem] = [dict(row) for row in await records.reader.fetchall(sql, (account.id,))]
    profile = msgspec.structs.asdict(account)
    request = await records.deletion_request(account.id)
    profile["deletion_request"] = msgspec.structs.asdict(request) if request else None
    profile["exported_at_ms"] = now_ms
    archives = []
    for name in await records.usage_archive_names(account.id):
        data = b"".join([chunk async for chunk in records.usage_archive_chunks(name)])
        archives.append((name, data))
    return profile, parts, archives


def reference_zip(
    profile: dict[str, Any],
    parts: dict[str, list[dict[str, Any]]],
    archives: list[tuple[str, bytes]],
) -> bytes:
    """The old ``_zip``, unchanged (its entries are stamped with ``time.time()``)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("profile.json", msgspec.json.format(msgspec.json.encode(profile)))
        for stem, rows in parts.items():
            archive.writestr(f"{stem}.json", msgspec.json.format(msgspec.json.encode(rows)))
            archive.writestr(f"{stem}.csv", _csv(rows))
        for name, data in archives:  # already gzip: stored as is
            archive.writestr(f"archives/{name}", data, compress_type=zipfile.ZIP_STORED)
        archive.writestr("README.txt", _README)
    return buffer.getvalue()


def _csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    columns = list(rows[0])
    return csv_text([columns, *([row.get(column, "") for column in columns] for row in rows)])


async def reference_export(
    records: AccountRecords,
    store: AccountStore,
    account_id: str,
    *,
    now_ms: int,
    monkeypatch: Any,
) -> bytes:
    """The old export's bytes, its entries stamped at ``now_ms`` (the streamed export's
    one timestamp) by a ``time.time`` fixed while the zip is written."""
    inputs = await reference_inputs(records, store, account_id, now_ms=now_ms)
    with monkeypatch.context() as patch:
        patch.setattr("time.time", lambda: now_ms / 1000)
        return reference_zip(*inputs)
