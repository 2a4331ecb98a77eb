"""The billing mail queue (``billing_mail`` rows): the seam between the sender and an engine.

``BillingMailer`` (``relay.payments.billing_mail``) decides what a row's mail says, to
whom, and what its outcome means; a ``MailQueue`` adds the closed month's statement rows,
hands out the rows due, and records each outcome. ``SqliteMailQueue`` (here) is the
embedded one: one process, one sender, the SQL as it always was. The cluster's is
``relay.payments.pg_mail_queue.PgMailQueue``, which claims each row before its send so that
two senders at once never mail one row twice.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from relay.storage.db import Database

__all__ = ["DueMail", "MailQueue", "SqliteMailQueue"]


class DueMail(msgspec.Struct, frozen=True):
    id: int
    kind: str  # "receipt" or "statement"
    account_id: str
    ref: str  # the receipt number, or the statement's month (YYYY-MM)
    attempt: int  # the number of the attempt now being made (1 for the first)


class MailQueue(Protocol):
    async def add_statements(self, month: str, end_ms: int, now_ms: int) -> int:
        """A statement row per account with ledger rows before ``end_ms`` (once each)."""
        ...

    async def due(self, now_ms: int, limit: int) -> list[DueMail]: ...

    async def record(
        self, mail: DueMail, outcome: str, error: str | None, *, now_ms: int, next_at_ms: int
    ) -> None:
        """The attempt's outcome: sent, skipped, failed, or pending (retried at
        ``next_at_ms``)."""
        ...


class SqliteMailQueue:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_statements(self, month: str, end_ms: int, now_ms: int) -> int:
        return await self._db.execute_write(
            "INSERT OR IGNORE INTO billing_mail (kind, account_id, ref, created_at_ms, "
            "next_attempt_at_ms) SELECT 'statement', id, ?, ?, ? FROM accounts "
            "WHERE id NOT IN (SELECT account_id FROM deletion_requests) AND EXISTS "
            "(SELECT 1 FROM ledger WHERE ledger.account_id = accounts.id AND created_at_ms < ?)",
            (month, now_ms, now_ms, end_ms),
        )

    async def due(self, now_ms: int, limit: int) -> list[DueMail]:
        await self._db.flush()  # a credit committed a moment ago is due too
        rows = await self._db.fetchall(
            "SELECT id, kind, account_id, ref, attempts FROM billing_mail "
            "WHERE status = 'pending' AND next_attempt_at_ms <= ? ORDER BY id LIMIT ?",
            (now_ms, limit),
        )
        return [
            DueMail(row["id"], row["kind"], row["account_id"], row["ref"], row["attempts"] + 1)
            for row in rows
        ]

    async def record(
        self, mail: DueMail, outcome: str, error: str | None, *, now_ms: int, next_at_ms: int
    ) -> None:
        await self._db.execute_write(
            "UPDATE billing_mail SET status = ?, attempts = ?, last_error = ?, "
            "next_attempt_at_ms = ?, done_at_ms = ? WHERE id = ?",
            (
                outcome,
                mail.attempt,
                error,
                next_at_ms,
                None if outcome == "pending" else now_ms,
                mail.id,
            ),
        )
