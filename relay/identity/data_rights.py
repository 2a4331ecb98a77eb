"""Data rights: account deletion with erasure 30 days later (the export, the other right,
is streamed by ``relay.identity.export``).

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

import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable

import msgspec

from relay.errors import NotFound
from relay.identity.account_records import (
    AccountRecords,
    DeletionRequest,
    SqliteAccountRecords,
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


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def pseudonym_for(account_id: str) -> str:
    return "deleted-" + hashlib.sha256(account_id.encode()).hexdigest()[:12]


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
    records: AccountRecords, store: AccountStore, account_id: str, *, actor: str
) -> bool:
    """Withdraw a pending deletion request (never one already carried out).

    The account stays suspended and its keys stay revoked: re-activating it is a separate,
    deliberate step, so a cancelled deletion never silently reopens an account. Returns
    False when there was nothing to cancel (two cancellations at once: one succeeds).
    """
    account = store.account(account_id)
    existing = await records.deletion_request(account.id)
    if existing is None or existing.erased_at_ms is not None:
        return False
    return await records.cancel_deletion(existing, actor)


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
