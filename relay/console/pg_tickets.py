"""Support tickets in PostgreSQL: the embedded ``TicketStore``'s rules on shared rows.

The same checks (``checked_ticket``, ``checked_message``), columns and statuses as
``relay.console.tickets``; a ticket and its first message, or a reply and the status it
sets, commit in one transaction, so an operator on any instance sees the whole thread.
"""

from __future__ import annotations

import time
from typing import Any

from relay.console.tickets import (
    TICKET_COLUMNS,
    Ticket,
    TicketMessage,
    TicketStatus,
    checked_message,
    checked_ticket,
    ticket_from_row,
)
from relay.identity.users import User

__all__ = ["PgTicketStore"]

_SELECT = (
    f"SELECT {TICKET_COLUMNS} FROM console_tickets t JOIN console_users u ON u.id = t.opened_by"
)


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _insert_message(
    conn: Any, ticket_id: int, author: User, *, from_operator: bool, body: str, now: int
) -> None:
    await conn.execute(
        "INSERT INTO console_ticket_messages (ticket_id, author_id, from_operator, body, "
        "created_at_ms) VALUES ($1, $2, $3, $4, $5)",
        ticket_id,
        author.id,
        int(from_operator),
        body,
        now,
    )


class PgTicketStore:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

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
        async with self._pool.acquire() as conn, conn.transaction():
            ticket_id = int(
                await conn.fetchval(
                    "INSERT INTO console_tickets (account_id, opened_by, subject, status, "
                    "request_id, payment_reference, created_at_ms, updated_at_ms) "
                    "VALUES ($1, $2, $3, 'open', $4, $5, $6, $6) RETURNING id",
                    account_id,
                    author.id,
                    ticket.subject,
                    ticket.request_id,
                    ticket.payment_reference,
                    now,
                )
            )
            await _insert_message(
                conn, ticket_id, author, from_operator=False, body=ticket.body, now=now
            )
        return ticket_id

    async def get(self, ticket_id: int) -> Ticket | None:
        row = await self._pool.fetchrow(f"{_SELECT} WHERE t.id = $1", ticket_id)
        return None if row is None else ticket_from_row(row)

    async def of_account(self, account_id: str, *, limit: int = 100) -> list[Ticket]:
        rows = await self._pool.fetch(
            f"{_SELECT} WHERE t.account_id = $1 ORDER BY t.id DESC LIMIT $2", account_id, limit
        )
        return [ticket_from_row(row) for row in rows]

    async def with_status(self, status: TicketStatus, *, limit: int = 100) -> list[Ticket]:
        rows = await self._pool.fetch(
            f"{_SELECT} WHERE t.status = $1 ORDER BY t.id DESC LIMIT $2", status, limit
        )
        return [ticket_from_row(row) for row in rows]

    async def messages(self, ticket_id: int) -> list[TicketMessage]:
        rows = await self._pool.fetch(
            "SELECT u.email, m.from_operator, m.body, m.created_at_ms "
            "FROM console_ticket_messages m JOIN console_users u ON u.id = m.author_id "
            "WHERE m.ticket_id = $1 ORDER BY m.id",
            ticket_id,
        )
        return [TicketMessage(r[0], bool(r[1]), r[2], r[3]) for r in rows]

    async def reply(self, ticket: Ticket, author: User, body: str, *, from_operator: bool) -> None:
        body = checked_message(body)
        now = _now_ms()
        async with self._pool.acquire() as conn, conn.transaction():
            await _insert_message(
                conn, ticket.id, author, from_operator=from_operator, body=body, now=now
            )
            await conn.execute(
                "UPDATE console_tickets SET status = $1, updated_at_ms = $2 WHERE id = $3",
                "answered" if from_operator else "open",
                now,
                ticket.id,
            )

    async def close(self, ticket: Ticket) -> None:
        await self._pool.execute(
            "UPDATE console_tickets SET status = 'closed', updated_at_ms = $1 WHERE id = $2",
            _now_ms(),
            ticket.id,
        )
