"""Support tickets: a subject, a thread of messages, and a status, per account.

A customer opens a ticket (optionally naming a request id or a payment reference) and
the thread goes back and forth: a customer's message makes it ``open``, an operator's
makes it ``answered``; either side may close it. Operators see every account's tickets.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Literal

import msgspec

from relay.errors import InvalidRequest
from relay.identity.users import User
from relay.storage.db import Database

__all__ = [
    "TICKET_COLUMNS",
    "TICKET_STATUSES",
    "NewTicket",
    "Ticket",
    "TicketMessage",
    "TicketStatus",
    "TicketStore",
    "checked_message",
    "checked_ticket",
    "ticket_from_row",
]

TicketStatus = Literal["open", "answered", "closed"]
TICKET_STATUSES: tuple[TicketStatus, ...] = ("open", "answered", "closed")
_SUBJECT_MAX = 200
_BODY_MAX = 10_000
_REFERENCE_MAX = 200
TICKET_COLUMNS = (
    "t.id, t.account_id, t.subject, t.status, t.request_id, t.payment_reference, "
    "t.created_at_ms, t.updated_at_ms, u.email AS opened_by"
)


class Ticket(msgspec.Struct, frozen=True):
    id: int
    account_id: str
    subject: str
    status: TicketStatus
    request_id: str | None
    payment_reference: str | None
    created_at_ms: int
    updated_at_ms: int
    opened_by: str


class TicketMessage(msgspec.Struct, frozen=True):
    author: str
    from_operator: bool
    body: str
    created_at_ms: int


class NewTicket(msgspec.Struct, frozen=True):
    """A ticket's first message and references, checked (the same on either engine)."""

    subject: str
    body: str
    request_id: str | None
    payment_reference: str | None


def ticket_from_row(row: Any) -> Ticket:
    return Ticket(*tuple(row))


def _text(value: str, name: str, limit: int) -> str:
    value = value.strip()
    if not value:
        raise InvalidRequest(f"{name} must not be empty", param=name)
    if len(value) > limit:
        raise InvalidRequest(f"{name} must be at most {limit} characters", param=name)
    return value


def _optional(value: str, name: str) -> str | None:
    value = value.strip()
    if len(value) > _REFERENCE_MAX:
        raise InvalidRequest(f"{name} must be at most {_REFERENCE_MAX} characters", param=name)
    return value or None


def checked_ticket(
    subject: str, body: str, request_id: str = "", payment_reference: str = ""
) -> NewTicket:
    return NewTicket(
        subject=_text(subject, "subject", _SUBJECT_MAX),
        body=checked_message(body),
        request_id=_optional(request_id, "request_id"),
        payment_reference=_optional(payment_reference, "payment_reference"),
    )


def checked_message(body: str) -> str:
    return _text(body, "message", _BODY_MAX)


def _now_ms() -> int:
    return int(time.time() * 1000)


class TicketStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def open(
        self,
        account_id: str,
        author: User,
        *,
        subject: str,
        body: str,
        request_id: str = "",
        payment_reference: str = "",
    ) -> int:
        ticket = checked_ticket(subject, body, request_id, payment_reference)
        now = _now_ms()

        def write(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "INSERT INTO console_tickets (account_id, opened_by, subject, status, "
                "request_id, payment_reference, created_at_ms, updated_at_ms) "
                "VALUES (?, ?, ?, 'open', ?, ?, ?, ?)",
                (
                    account_id,
                    author.id,
                    ticket.subject,
                    ticket.request_id,
                    ticket.payment_reference,
                    now,
                    now,
                ),
            )
            ticket_id = int(cursor.lastrowid or 0)
            _insert_message(conn, ticket_id, author, from_operator=False, body=ticket.body, now=now)
            return ticket_id

        return await self._db.write(write)

    async def get(self, ticket_id: int) -> Ticket | None:
        row = await self._db.fetchone(
            f"SELECT {TICKET_COLUMNS} FROM console_tickets t "
            "JOIN console_users u ON u.id = t.opened_by WHERE t.id = ?",
            (ticket_id,),
        )
        return None if row is None else ticket_from_row(row)

    async def of_account(self, account_id: str, *, limit: int = 100) -> list[Ticket]:
        rows = await self._db.fetchall(
            f"SELECT {TICKET_COLUMNS} FROM console_tickets t "
            "JOIN console_users u ON u.id = t.opened_by WHERE t.account_id = ? "
            "ORDER BY t.id DESC LIMIT ?",
            (account_id, limit),
        )
        return [ticket_from_row(row) for row in rows]

    async def with_status(self, status: TicketStatus, *, limit: int = 100) -> list[Ticket]:
        """Every account's tickets in one status, newest first (for operators)."""
        rows = await self._db.fetchall(
            f"SELECT {TICKET_COLUMNS} FROM console_tickets t "
            "JOIN console_users u ON u.id = t.opened_by WHERE t.status = ? "
            "ORDER BY t.id DESC LIMIT ?",
            (status, limit),
        )
        return [ticket_from_row(row) for row in rows]

    async def messages(self, ticket_id: int) -> list[TicketMessage]:
        rows = await self._db.fetchall(
            "SELECT u.email, m.from_operator, m.body, m.created_at_ms "
            "FROM console_ticket_messages m JOIN console_users u ON u.id = m.author_id "
            "WHERE m.ticket_id = ? ORDER BY m.id",
            (ticket_id,),
        )
        return [TicketMessage(r[0], bool(r[1]), r[2], r[3]) for r in rows]

    async def reply(self, ticket: Ticket, author: User, body: str, *, from_operator: bool) -> None:
        """Add a message; the ticket becomes ``answered`` (operator) or ``open`` (customer)."""
        body = checked_message(body)
        status = "answered" if from_operator else "open"
        now = _now_ms()

        def write(conn: sqlite3.Connection) -> None:
            _insert_message(
                conn, ticket.id, author, from_operator=from_operator, body=body, now=now
            )
            conn.execute(
                "UPDATE console_tickets SET status = ?, updated_at_ms = ? WHERE id = ?",
                (status, now, ticket.id),
            )

        await self._db.write(write)

    async def close(self, ticket: Ticket) -> None:
        await self._db.write(
            lambda conn: conn.execute(
                "UPDATE console_tickets SET status = 'closed', updated_at_ms = ? WHERE id = ?",
                (_now_ms(), ticket.id),
            )
        )


def _insert_message(
    conn: sqlite3.Connection,
    ticket_id: int,
    author: User,
    *,
    from_operator: bool,
    body: str,
    now: int,
) -> None:
    conn.execute(
        "INSERT INTO console_ticket_messages (ticket_id, author_id, from_operator, body, "
        "created_at_ms) VALUES (?, ?, ?, ?, ?)",
        (ticket_id, author.id, int(from_operator), body, now),
    )
