"""Where the console's records live: sessions, invites, password resets and tickets.

The console's pages call these protocols and never name an engine (users are
``relay.identity.user_records.UserRecords``). The embedded stores are the SQLite classes
of ``relay.console`` (one writer transaction per change, as ever); the cluster ones are
``relay.console.pg_console`` and ``pg_tickets``, whose rows every instance shares: a session
made through one instance is valid on all of them, an invite made on one is accepted on
another, once.
"""

from __future__ import annotations

from typing import Protocol

from relay.console.auth.sessions import Session
from relay.console.invites import Invite
from relay.console.tickets import Ticket, TicketMessage, TicketStatus
from relay.identity.roles import Role
from relay.identity.users import User

__all__ = ["InviteRecords", "ResetRecords", "SessionRecords", "TicketRecords"]


class SessionRecords(Protocol):
    async def create(self, user: User) -> Session: ...

    async def load(self, session_id: str) -> tuple[Session, User] | None: ...

    async def delete(self, session_id: str) -> None: ...


class InviteRecords(Protocol):
    async def create(self, account_id: str, role: Role, *, by: User) -> str: ...

    async def peek(self, token: str) -> Invite | None: ...

    async def accept(self, token: str, user: User) -> Invite | None: ...

    async def pending(self, account_id: str) -> list[Invite]: ...

    async def revoke(self, account_id: str, ref: str, *, actor: str) -> bool: ...


class ResetRecords(Protocol):
    async def create(self, user_id: str, email: str) -> str: ...

    async def peek(self, token: str) -> str | None: ...

    async def consume(self, token: str) -> str | None: ...


class TicketRecords(Protocol):
    async def open(
        self,
        account_id: str,
        author: User,
        *,
        subject: str,
        body: str,
        request_id: str = "",
        payment_reference: str = "",
    ) -> int: ...

    async def get(self, ticket_id: int) -> Ticket | None: ...

    async def of_account(self, account_id: str, *, limit: int = 100) -> list[Ticket]: ...

    async def with_status(self, status: TicketStatus, *, limit: int = 100) -> list[Ticket]: ...

    async def messages(self, ticket_id: int) -> list[TicketMessage]: ...

    async def reply(
        self, ticket: Ticket, author: User, body: str, *, from_operator: bool
    ) -> None: ...

    async def close(self, ticket: Ticket) -> None: ...
