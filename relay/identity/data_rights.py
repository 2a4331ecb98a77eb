"""Data rights: an account's data as a zip, and account deletion with erasure 30 days later.

Export: one zip with JSON and CSV of the profile, members (when the console's tables
exist), keys' metadata, usage, ledger, payments, receipts and tickets. Key hashes, key
secrets, password hashes and the admin token are never read, so they cannot leak: every
query names its columns.

Deletion: at once the account is suspended and its keys revoked (each change with its
audit row); ``ErasureJob`` erases personal data once the request is 30 days old. Erasure
replaces the account's name with a pseudonym ``deleted-<hash>``, erases its members' names
and e-mails (those who belong to no other account), key labels, ticket subjects and
bodies, the buyer name on receipts, and the saved card link. Ledger, usage and payment
rows stay (money records are kept; they carry only the random account id), so the balance
is still the sum of the ledger rows (the statements: ``relay.identity.erasure_plan``, shared
with the cluster's job). Audit rows are hash-chained and are not rewritten:
older ones may still hold the former name until audit retention archives them.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import sqlite3
import time
import zipfile
from collections.abc import Callable
from typing import Any

import msgspec

from relay.csv_cells import csv_text
from relay.errors import NotFound
from relay.identity.account_records import (
    AccountRecords,
    DeletionRequest,
    SqliteAccountRecords,
    UsageArchive,
    read_deletion_request,
)
from relay.identity.accounts import AccountStore
from relay.identity.audit import append_audit
from relay.identity.erasure_plan import ERASED, ONLY_HERE_USERS, erasure_counts, erasure_steps
from relay.jobs.periodic import PeriodicTask
from relay.storage.db import Database
from relay.storage.reader import RowReader

__all__ = [
    "ERASE_AFTER_MS",
    "DeletionRequest",
    "ErasureJob",
    "build_export",
    "cancel_deletion",
    "deletion_request",
    "erase_account",
    "pseudonym_for",
    "request_deletion",
]

log = logging.getLogger(__name__)
DAY_MS = 86_400_000
ERASE_AFTER_MS = 30 * DAY_MS
Clock = Callable[[], int]

# Each export part: (file stem, table that must exist, SQL with one ? for the account id).
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


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def pseudonym_for(account_id: str) -> str:
    return "deleted-" + hashlib.sha256(account_id.encode()).hexdigest()[:12]


# -- export --------------------------------------------------------------------------------


async def build_export(
    records: AccountRecords,
    store: AccountStore,
    account_id: str,
    *,
    now_ms: int | None = None,
) -> bytes:
    """The account's data as a zip (``<part>.json`` and ``<part>.csv`` per part), with the
    account's monthly usage archives under ``archives/`` (rows older than the retention
    period live only there)."""
    account = store.account(account_id)
    tables = await records.tables()
    parts: dict[str, list[dict[str, Any]]] = {}
    for stem, table, sql in _EXPORT_QUERIES:
        if table in tables:
            parts[stem] = [dict(row) for row in await records.reader.fetchall(sql, (account.id,))]
    profile = msgspec.structs.asdict(account)
    request = await records.deletion_request(account.id)
    profile["deletion_request"] = msgspec.structs.asdict(request) if request else None
    profile["exported_at_ms"] = now_ms if now_ms is not None else _now_ms()
    archives = await records.usage_archives(account.id)
    return await asyncio.to_thread(_zip, profile, parts, archives)


def _zip(
    profile: dict[str, Any], parts: dict[str, list[dict[str, Any]]], archives: list[UsageArchive]
) -> bytes:
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


_README = """relay account export
Amounts are integers in micro-units (*_micros: 1,000,000 = 1 USD); times are unix ms (UTC).
Keys are listed by metadata only: relay never stores a key's secret, only a hash.
"""


# -- deletion request ----------------------------------------------------------------------


async def deletion_request(db: RowReader, account_id: str) -> DeletionRequest | None:
    """The embedded store's request (the console's reads; admin routes use the seam)."""
    return await read_deletion_request(db, account_id)


async def request_deletion(
    records: AccountRecords,
    store: AccountStore,
    account_id: str,
    *,
    actor: str,
    now_ms: int | None = None,
    on_key_revoked: Callable[[str], None] = lambda key_id: None,
) -> DeletionRequest:
    """Suspend the account and revoke its keys now; schedule erasure in 30 days.

    Each suspension and revocation is the store's write (in cluster mode announced to every
    instance). Idempotent: a second request returns the first (its date does not move).
    """
    account = store.account(account_id)
    existing = await records.deletion_request(account.id)
    if existing is not None:
        return existing
    now = now_ms if now_ms is not None else _now_ms()
    if account.status != "suspended":
        suspended = msgspec.structs.replace(account, status="suspended")
        await store.update_account(suspended, actor=actor)
    for key in store.keys_of(account.id):
        if key.status != "revoked":
            revoked = msgspec.structs.replace(key, status="revoked")
            await store.update_key(revoked, actor=actor, action="key.revoke")
            on_key_revoked(key.id)
    return await records.record_deletion(
        DeletionRequest(account.id, now, actor, now + ERASE_AFTER_MS)
    )


async def cancel_deletion(
    db: Database, store: AccountStore, account_id: str, *, actor: str
) -> bool:
    """Withdraw a pending deletion request (never one already carried out).

    The account stays suspended and its keys stay revoked: re-activating it is a separate,
    deliberate step, so a cancelled deletion never silently reopens an account. Returns
    False when there was nothing to cancel.
    """
    account = store.account(account_id)
    existing = await deletion_request(db, account.id)
    if existing is None or existing.erased_at_ms is not None:
        return False
    audit_key = store.audit_key

    def write(conn: sqlite3.Connection) -> None:
        conn.execute(
            "DELETE FROM deletion_requests WHERE account_id = ? AND erased_at_ms IS NULL",
            (account.id,),
        )
        append_audit(
            conn,
            audit_key,
            actor=actor,
            action="account.deletion_cancelled",
            target=account.id,
            detail={"requested_at_ms": existing.requested_at_ms},
        )

    await db.write(write)
    return True


# -- erasure -------------------------------------------------------------------------------


def _erase_rows(
    conn: sqlite3.Connection, account_id: str, pseudonym: str, tables: set[str], at_ms: int
) -> dict[str, int]:
    """Overwrite the account's personal data in place (inside the writer's transaction)."""
    only_here = None
    if "console_memberships" in tables:
        only_here = [str(row[0]) for row in conn.execute(ONLY_HERE_USERS, (account_id, account_id))]
    changed: dict[str, int] = {}
    for step in erasure_steps(account_id, pseudonym, at_ms, only_here=only_here):
        rows = conn.execute(step.sql, step.params).rowcount
        if step.counted_as is not None:
            changed[step.counted_as] = rows
    return erasure_counts(changed, only_here)


async def erase_account(
    db: Database, store: AccountStore, account_id: str, *, now_ms: int, actor: str = "erasure"
) -> str:
    """Erase one account's personal data now; returns its pseudonym."""
    account = store.account(account_id)
    pseudonym = pseudonym_for(account.id)
    tables = await SqliteAccountRecords(db, store.audit_key).tables()
    audit_key = store.audit_key

    def write(conn: sqlite3.Connection) -> None:
        counts = _erase_rows(conn, account.id, pseudonym, tables, now_ms)
        conn.execute(
            "UPDATE deletion_requests SET erased_at_ms = ?, pseudonym = ? WHERE account_id = ?",
            (now_ms, pseudonym, account.id),
        )
        detail = {"pseudonym": pseudonym, **counts}
        append_audit(
            conn, audit_key, actor=actor, action="account.erase", target=account.id, detail=detail
        )

    await db.write(write)
    _forget_personal_data(store, account.id, pseudonym)
    return pseudonym


def _forget_personal_data(store: AccountStore, account_id: str, pseudonym: str) -> None:
    """Bring the in-memory records in line with the erased rows."""
    renamed = msgspec.structs.replace(store.accounts[account_id], name=pseudonym)
    # _put_account also drops the old name from the by-name index (no public way yet).
    store._put_account(renamed)
    for key in store.keys_of(account_id):
        store.keys[key.id] = msgspec.structs.replace(key, label=ERASED)


class ErasureJob:
    """Erases accounts whose deletion request is due; ``start()`` runs it once a day."""

    def __init__(
        self,
        db: Database,
        store: AccountStore,
        *,
        clock_ms: Clock = _now_ms,
        interval_s: float = 86_400.0,
    ) -> None:
        self.db = db
        self.store = store
        self.clock_ms = clock_ms
        self.interval_s = interval_s
        # The first run at start-up: a request that came due while relay was down waits no longer.
        self._periodic = PeriodicTask(
            "relay-erasure", self.run_once, interval_s=interval_s, first_after_s=0, log=log
        )

    def start(self) -> None:
        self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()

    async def run_once(self) -> list[str]:
        """Erase every due account; the ids erased."""
        now = self.clock_ms()
        rows = await self.db.fetchall(
            "SELECT account_id FROM deletion_requests "
            "WHERE erased_at_ms IS NULL AND erase_after_ms <= ?",
            (now,),
        )
        erased: list[str] = []
        for row in rows:
            account_id = str(row[0])
            try:
                await erase_account(self.db, self.store, account_id, now_ms=now)
            except NotFound:
                log.warning("deletion request for unknown account %s skipped", account_id)
                continue
            erased.append(account_id)
        return erased
