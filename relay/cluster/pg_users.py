"""Console users, memberships and key creators in PostgreSQL: the cluster's ``UserRecords``.

The embedded ``relay.identity.users.UserStore`` with PostgreSQL's transactions: the same
checks (``normalize_email``, ``check_password``, ``check_display_name``), the same argon2id
``Passwords``, the same columns. Every change is one transaction holding its audit row,
appended to PostgreSQL's chain (``relay.cluster.pg_audit``): a write that rolls back leaves
no audit row, and every instance reads the same users the moment the transaction commits.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from relay.cluster import pg_audit
from relay.identity.accounts import Conflict
from relay.identity.keys import SecretHasher
from relay.identity.roles import Role
from relay.identity.users import (
    Membership,
    Passwords,
    User,
    prepare_user,
    user_from_row,
)

__all__ = ["PgUserStore", "insert_membership"]

_USER_COLUMNS = "id, email, display_name, operator, status, session_version, created_at_ms"


def _now_ms() -> int:
    return int(time.time() * 1000)


async def insert_membership(
    conn: Any, audit_key: bytes, account_id: str, user_id: str, role: Role, *, actor: str
) -> None:
    """Add a user to an account or change their role (inside the caller's transaction)."""
    await conn.execute(
        "INSERT INTO console_memberships (account_id, user_id, role, created_at_ms) "
        "VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (account_id, user_id) DO UPDATE SET role = excluded.role",
        account_id,
        user_id,
        role.value,
        _now_ms(),
    )
    detail = {"account_id": account_id, "role": role.value}
    await pg_audit.append(
        conn, audit_key, actor=actor, action="member.set", target=user_id, detail=detail
    )


class PgUserStore:
    def __init__(self, pool: Any, audit_key: bytes, hasher: SecretHasher) -> None:
        self._pool = pool
        self._audit_key = audit_key
        self._passwords = Passwords(hasher)

    # -- users ------------------------------------------------------------------------

    async def create_user(
        self,
        email: str,
        display_name: str,
        password: str,
        *,
        operator: bool,
        actor: str,
        membership: tuple[str, Role] | None = None,
    ) -> User:
        now = _now_ms()
        user, password_hash = await prepare_user(
            self._passwords, email, display_name, password, operator=operator, now_ms=now
        )
        if await self.by_email(user.email) is not None:
            raise Conflict(f"A console user with email {user.email!r} already exists")
        detail: dict[str, Any] = {"email": user.email, "operator": operator}
        import asyncpg  # the 'cluster' extra (app.py imports this module in every mode)

        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO console_users (id, email, display_name, password_hash, "
                    "operator, status, session_version, created_at_ms, updated_at_ms) "
                    "VALUES ($1, $2, $3, $4, $5, 'active', 1, $6, $6)",
                    user.id,
                    user.email,
                    user.display_name,
                    password_hash,
                    int(operator),
                    now,
                )
                await self._audit(conn, actor, "user.create", user.id, detail)
                if membership is not None:
                    account_id, role = membership
                    await insert_membership(
                        conn, self._audit_key, account_id, user.id, role, actor=actor
                    )
        except asyncpg.IntegrityConstraintViolationError as exc:
            # Two instances creating one email at once: the unique index decides.
            raise Conflict(f"Cannot create user {user.email!r}: {exc}") from None
        return user

    async def get(self, user_id: str) -> User | None:
        row = await self._pool.fetchrow(
            f"SELECT {_USER_COLUMNS} FROM console_users WHERE id = $1", user_id
        )
        return None if row is None else user_from_row(row)

    async def all_users(self) -> list[User]:
        rows = await self._pool.fetch(
            f"SELECT {_USER_COLUMNS} FROM console_users ORDER BY created_at_ms, id"
        )
        return [user_from_row(row) for row in rows]

    async def by_email(self, email: str) -> User | None:
        row = await self._pool.fetchrow(
            f"SELECT {_USER_COLUMNS} FROM console_users WHERE email = $1", email.strip().lower()
        )
        return None if row is None else user_from_row(row)

    async def authenticate(self, email: str, password: str) -> User | None:
        row = await self._pool.fetchrow(
            f"SELECT {_USER_COLUMNS}, password_hash FROM console_users WHERE email = $1",
            email.strip().lower(),
        )
        ok = await self._passwords.verify(None if row is None else row["password_hash"], password)
        if row is None or not ok:
            return None
        user = user_from_row(row)
        return user if user.status == "active" else None

    async def change_password(self, user: User, new_password: str, *, actor: str) -> User:
        """A new password and a new session version: every session of the user ends, on
        every instance (sessions are rows here, checked against the version on each load)."""
        password_hash = await self._passwords.hash(new_password)
        async with self._pool.acquire() as conn, conn.transaction():
            version = await conn.fetchval(
                "UPDATE console_users SET password_hash = $1, "
                "session_version = session_version + 1, updated_at_ms = $2 WHERE id = $3 "
                "RETURNING session_version",
                password_hash,
                _now_ms(),
                user.id,
            )
            await conn.execute("DELETE FROM console_sessions WHERE user_id = $1", user.id)
            await self._audit(conn, actor, "user.password", user.id, {})
        return msgspec.structs.replace(user, session_version=int(version))

    # -- memberships ------------------------------------------------------------------

    async def memberships(self, user_id: str) -> list[Membership]:
        rows = await self._pool.fetch(
            "SELECT account_id, user_id, role FROM console_memberships WHERE user_id = $1 "
            "ORDER BY created_at_ms, account_id",
            user_id,
        )
        return [Membership(r["account_id"], r["user_id"], Role(r["role"])) for r in rows]

    async def role_in(self, user_id: str, account_id: str) -> Role | None:
        role = await self._pool.fetchval(
            "SELECT role FROM console_memberships WHERE account_id = $1 AND user_id = $2",
            account_id,
            user_id,
        )
        return None if role is None else Role(role)

    async def members(self, account_id: str) -> list[Membership]:
        rows = await self._pool.fetch(
            "SELECT m.account_id, m.user_id, m.role, u.email, u.display_name "
            "FROM console_memberships m JOIN console_users u ON u.id = m.user_id "
            "WHERE m.account_id = $1 ORDER BY m.created_at_ms, m.user_id",
            account_id,
        )
        return [
            Membership(
                r["account_id"], r["user_id"], Role(r["role"]), r["email"], r["display_name"]
            )
            for r in rows
        ]

    async def set_membership(
        self, account_id: str, user_id: str, role: Role, *, actor: str
    ) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await insert_membership(conn, self._audit_key, account_id, user_id, role, actor=actor)

    async def remove_membership(self, account_id: str, user_id: str, *, actor: str) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM console_memberships WHERE account_id = $1 AND user_id = $2",
                account_id,
                user_id,
            )
            await self._audit(conn, actor, "member.remove", user_id, {"account_id": account_id})

    # -- who created which key (members may manage only their own) ------------------------

    async def note_key_creator(self, key_id: str, user_id: str) -> None:
        await self._pool.execute(
            "INSERT INTO console_key_creators (key_id, user_id) VALUES ($1, $2) "
            "ON CONFLICT (key_id) DO UPDATE SET user_id = excluded.user_id",
            key_id,
            user_id,
        )

    async def keys_created_by(self, user_id: str) -> set[str]:
        rows = await self._pool.fetch(
            "SELECT key_id FROM console_key_creators WHERE user_id = $1", user_id
        )
        return {row["key_id"] for row in rows}

    async def key_creators(self, account_id: str) -> dict[str, str]:
        rows = await self._pool.fetch(
            "SELECT c.key_id, u.email FROM console_key_creators c "
            "JOIN api_keys k ON k.id = c.key_id JOIN console_users u ON u.id = c.user_id "
            "WHERE k.account_id = $1",
            account_id,
        )
        return {row["key_id"]: row["email"] for row in rows}

    async def _audit(
        self, conn: Any, actor: str, action: str, target: str, detail: dict[str, Any]
    ) -> None:
        await pg_audit.append(
            conn, self._audit_key, actor=actor, action=action, target=target, detail=detail
        )
