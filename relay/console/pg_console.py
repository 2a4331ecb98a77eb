"""Console sessions, invites and password resets in PostgreSQL: shared by every instance.

The embedded stores (``relay.console.auth.sessions``, ``relay.console.invites``,
``relay.console.password_resets``) with PostgreSQL's transactions: the same tokens (a random
id and its HMAC by a subkey of the server secret, which every instance reads from the same
file), the same stored SHA-256 of the id, the same one-time rules. A session made through
one instance is a row every instance loads; an invite or reset link made on one is used on
any, exactly once: the ``UPDATE … WHERE used_at_ms IS NULL`` that marks it is the race's
only winner, and the membership or password it grants commits in the same transaction.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from relay.cluster import pg_audit
from relay.cluster.pg_users import insert_membership
from relay.console.auth.sessions import SESSION_LIFETIME_MS, Session, id_hash
from relay.console.auth.signing import sign, unsign
from relay.console.invites import INVITE_LIFETIME_MS, Invite
from relay.console.password_resets import RESET_LIFETIME_MS
from relay.identity.roles import Role
from relay.identity.users import User, user_from_row

__all__ = ["PgInviteStore", "PgPasswordResets", "PgSessionStore"]

_USER_COLUMNS = (
    "u.id, u.email, u.display_name, u.operator, u.status, u.session_version, u.created_at_ms"
)


def _now_ms() -> int:
    return int(time.time() * 1000)


class PgSessionStore:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def create(self, user: User) -> Session:
        now = _now_ms()
        session = Session(
            id=secrets.token_urlsafe(32), user_id=user.id, expires_at_ms=now + SESSION_LIFETIME_MS
        )
        async with self._pool.acquire() as conn, conn.transaction():
            # Expired sessions of this user are swept here, so the table never grows unbounded.
            await conn.execute(
                "DELETE FROM console_sessions WHERE user_id = $1 AND expires_at_ms < $2",
                user.id,
                now,
            )
            await conn.execute(
                "INSERT INTO console_sessions (id_hash, user_id, session_version, "
                "created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, $5)",
                id_hash(session.id),
                user.id,
                user.session_version,
                now,
                session.expires_at_ms,
            )
        return session

    async def load(self, session_id: str) -> tuple[Session, User] | None:
        """The live session and its user; None if unknown, expired, outdated or disabled."""
        row = await self._pool.fetchrow(
            f"SELECT s.expires_at_ms, s.session_version AS made_at_version, {_USER_COLUMNS} "
            "FROM console_sessions s JOIN console_users u ON u.id = s.user_id "
            "WHERE s.id_hash = $1",
            id_hash(session_id),
        )
        if row is None:
            return None
        user = user_from_row(row)
        live = (
            row["expires_at_ms"] > _now_ms()
            and row["made_at_version"] == user.session_version
            and user.status == "active"
        )
        if not live:
            await self.delete(session_id)
            return None
        return Session(session_id, user.id, int(row["expires_at_ms"])), user

    async def delete(self, session_id: str) -> None:
        await self._pool.execute(
            "DELETE FROM console_sessions WHERE id_hash = $1", id_hash(session_id)
        )


class PgInviteStore:
    def __init__(self, pool: Any, signing_key: bytes, audit_key: bytes) -> None:
        self._pool = pool
        self._signing_key = signing_key
        self._audit_key = audit_key

    async def create(self, account_id: str, role: Role, *, by: User) -> str:
        invite_id = secrets.token_urlsafe(24)
        now = _now_ms()
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO console_invites (id_hash, account_id, role, created_by, "
                "created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
                id_hash(invite_id),
                account_id,
                role.value,
                by.id,
                now,
                now + INVITE_LIFETIME_MS,
            )
            await pg_audit.append(
                conn,
                self._audit_key,
                actor=by.email,
                action="invite.create",
                target=account_id,
                detail={"role": role.value},
            )
        return sign(self._signing_key, invite_id)

    async def peek(self, token: str) -> Invite | None:
        invite_id = unsign(self._signing_key, token)
        if invite_id is None:
            return None
        row = await self._pool.fetchrow(
            "SELECT account_id, role, created_at_ms, expires_at_ms FROM console_invites "
            "WHERE id_hash = $1 AND used_at_ms IS NULL AND expires_at_ms > $2",
            id_hash(invite_id),
            _now_ms(),
        )
        return None if row is None else Invite(row[0], Role(row[1]), row[2], row[3])

    async def accept(self, token: str, user: User) -> Invite | None:
        """Use the invite for ``user``: None if it was not valid (or was just used)."""
        invite = await self.peek(token)
        invite_id = unsign(self._signing_key, token)
        if invite is None or invite_id is None:
            return None
        now = _now_ms()
        async with self._pool.acquire() as conn, conn.transaction():
            used = await conn.fetchval(
                "UPDATE console_invites SET used_at_ms = $1, used_by = $2 WHERE id_hash = $3 "
                "AND used_at_ms IS NULL AND expires_at_ms > $1 RETURNING id_hash",
                now,
                user.id,
                id_hash(invite_id),
            )
            if used is None:
                return None  # another tab, person or instance used it first
            await insert_membership(
                conn, self._audit_key, invite.account_id, user.id, invite.role, actor=user.email
            )
        return invite

    async def pending(self, account_id: str) -> list[Invite]:
        rows = await self._pool.fetch(
            "SELECT account_id, role, created_at_ms, expires_at_ms, id_hash FROM console_invites "
            "WHERE account_id = $1 AND used_at_ms IS NULL AND expires_at_ms > $2 "
            "ORDER BY created_at_ms DESC LIMIT 50",
            account_id,
            _now_ms(),
        )
        return [Invite(r[0], Role(r[1]), r[2], r[3], r[4]) for r in rows]

    async def revoke(self, account_id: str, ref: str, *, actor: str) -> bool:
        now = _now_ms()
        async with self._pool.acquire() as conn, conn.transaction():
            ended = await conn.fetchval(
                "UPDATE console_invites SET expires_at_ms = $1 WHERE id_hash = $2 "
                "AND account_id = $3 AND used_at_ms IS NULL AND expires_at_ms > $1 "
                "RETURNING id_hash",
                now,
                ref,
                account_id,
            )
            if ended is None:
                return False
            await pg_audit.append(
                conn,
                self._audit_key,
                actor=actor,
                action="invite.revoke",
                target=account_id,
                detail={},
            )
        return True


class PgPasswordResets:
    def __init__(self, pool: Any, signing_key: bytes, audit_key: bytes) -> None:
        self._pool = pool
        self._signing_key = signing_key
        self._audit_key = audit_key

    async def create(self, user_id: str, email: str) -> str:
        reset_id = secrets.token_urlsafe(24)
        now = _now_ms()
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO console_password_resets (id_hash, user_id, created_at_ms, "
                "expires_at_ms) VALUES ($1, $2, $3, $4)",
                id_hash(reset_id),
                user_id,
                now,
                now + RESET_LIFETIME_MS,
            )
            await pg_audit.append(
                conn,
                self._audit_key,
                actor=email,
                action="password.reset_requested",
                target=user_id,
                detail={},
            )
        return sign(self._signing_key, reset_id)

    async def peek(self, token: str) -> str | None:
        reset_id = unsign(self._signing_key, token)
        if reset_id is None:
            return None
        user_id = await self._pool.fetchval(
            "SELECT user_id FROM console_password_resets "
            "WHERE id_hash = $1 AND used_at_ms IS NULL AND expires_at_ms > $2",
            id_hash(reset_id),
            _now_ms(),
        )
        return None if user_id is None else str(user_id)

    async def consume(self, token: str) -> str | None:
        reset_id = unsign(self._signing_key, token)
        if reset_id is None:
            return None
        user_id = await self._pool.fetchval(
            "UPDATE console_password_resets SET used_at_ms = $1 "
            "WHERE id_hash = $2 AND used_at_ms IS NULL AND expires_at_ms > $1 "
            "RETURNING user_id",
            _now_ms(),
            id_hash(reset_id),
        )
        return None if user_id is None else str(user_id)
