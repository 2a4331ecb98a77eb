"""Console users and their memberships of accounts, in SQLite.

A user signs in with an email and a password (stored only as an argon2id hash, made and
checked off the event loop). Memberships give a user a role in an account. Operators are
users with ``operator`` set. Every change is committed with its audit row in one
transaction, the actor being the acting user's email (or ``admin-token``).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import sqlite3
import time
from typing import Any

import msgspec

from relay.errors import InvalidRequest
from relay.identity.accounts import Conflict
from relay.identity.audit import append_audit
from relay.identity.keys import SecretHasher
from relay.identity.roles import Role
from relay.storage.db import Database

__all__ = [
    "prepare_user",
    "PASSWORD_MIN_LENGTH",
    "Membership",
    "Passwords",
    "User",
    "UserStore",
    "check_display_name",
    "check_password",
    "insert_membership",
    "new_user_id",
    "normalize_email",
    "user_from_row",
]

PASSWORD_MIN_LENGTH = 10
_PASSWORD_MAX_LENGTH = 1024
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,190}$")
_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_USER_COLUMNS = "id, email, display_name, operator, status, session_version, created_at_ms"


class User(msgspec.Struct, frozen=True):
    id: str
    email: str
    display_name: str
    operator: bool = False
    status: str = "active"
    session_version: int = 1
    created_at_ms: int = 0


class Membership(msgspec.Struct, frozen=True):
    account_id: str
    user_id: str
    role: Role
    email: str = ""
    display_name: str = ""


def user_from_row(row: Any) -> User:
    """A ``User`` from a row of either engine (both index columns by name)."""
    return User(
        id=row["id"],
        email=row["email"],
        display_name=row["display_name"],
        operator=bool(row["operator"]),
        status=row["status"],
        session_version=row["session_version"],
        created_at_ms=row["created_at_ms"],
    )


def normalize_email(email: str) -> str:
    """Lower-cased and trimmed; refuses what cannot be an address."""
    email = email.strip().lower()
    if not _EMAIL.match(email):
        raise InvalidRequest("email must look like name@example.com", param="email")
    return email


def check_password(password: str) -> str:
    if not PASSWORD_MIN_LENGTH <= len(password) <= _PASSWORD_MAX_LENGTH:
        raise InvalidRequest(
            f"the password must be {PASSWORD_MIN_LENGTH} to {_PASSWORD_MAX_LENGTH} characters",
            param="password",
        )
    return password


def check_display_name(name: str) -> str:
    name = " ".join(name.split())
    if not 1 <= len(name) <= 100:
        raise InvalidRequest("the display name must be 1 to 100 characters", param="display_name")
    return name


def insert_membership(
    conn: sqlite3.Connection,
    audit_key: bytes,
    account_id: str,
    user_id: str,
    role: Role,
    *,
    actor: str,
) -> None:
    """Add a user to an account or change their role (inside the writer's transaction)."""
    conn.execute(
        "INSERT INTO console_memberships (account_id, user_id, role, created_at_ms) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (account_id, user_id) DO UPDATE SET role = excluded.role",
        (account_id, user_id, role.value, _now_ms()),
    )
    detail = {"account_id": account_id, "role": role.value}
    append_audit(conn, audit_key, actor=actor, action="member.set", target=user_id, detail=detail)


def _now_ms() -> int:
    return int(time.time() * 1000)


def new_user_id() -> str:
    return "usr_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))


class Passwords:
    """argon2id off the event loop, for either engine's user store."""

    def __init__(self, hasher: SecretHasher) -> None:
        self._hasher = hasher
        self._dummy_hash: str | None = None

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, check_password(password))

    async def verify(self, stored: str | None, password: str) -> bool:
        """Whether ``password`` matches ``stored``; with no stored hash (an unknown email)
        a dummy one is still verified, so response times do not tell which emails exist."""
        if stored is None:
            if self._dummy_hash is None:
                self._dummy_hash = await self.hash(secrets.token_urlsafe(16))
            stored = self._dummy_hash
        attempt = password[:_PASSWORD_MAX_LENGTH]
        return await asyncio.to_thread(self._hasher.verify, stored, attempt)


async def prepare_user(
    passwords: Passwords,
    email: str,
    display_name: str,
    password: str,
    *,
    operator: bool,
    now_ms: int,
) -> tuple[User, str]:
    """A new user checked as every store checks one, and its password's hash."""
    user = User(
        id=new_user_id(),
        email=normalize_email(email),
        display_name=check_display_name(display_name),
        operator=operator,
        created_at_ms=now_ms,
    )
    return user, await passwords.hash(password)


class UserStore:
    def __init__(self, db: Database, audit_key: bytes, hasher: SecretHasher) -> None:
        self._db = db
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
        """A new user (optionally with a role in an account), with its audit row."""
        now = _now_ms()
        user, password_hash = await prepare_user(
            self._passwords, email, display_name, password, operator=operator, now_ms=now
        )
        if await self.by_email(user.email) is not None:
            raise Conflict(f"A console user with email {user.email!r} already exists")
        detail: dict[str, Any] = {"email": user.email, "operator": operator}

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO console_users (id, email, display_name, password_hash, operator, "
                "status, session_version, created_at_ms, updated_at_ms) "
                "VALUES (?, ?, ?, ?, ?, 'active', 1, ?, ?)",
                (user.id, user.email, user.display_name, password_hash, int(operator), now, now),
            )
            self._audit(conn, actor, "user.create", user.id, detail)
            if membership is not None:
                account_id, role = membership
                insert_membership(conn, self._audit_key, account_id, user.id, role, actor=actor)

        try:
            await self._db.write(write)
        except sqlite3.IntegrityError as exc:
            raise Conflict(f"Cannot create user {user.email!r}: {exc}") from None
        return user

    async def get(self, user_id: str) -> User | None:
        row = await self._db.fetchone(
            f"SELECT {_USER_COLUMNS} FROM console_users WHERE id = ?", (user_id,)
        )
        return None if row is None else user_from_row(row)

    async def all_users(self) -> list[User]:
        """Every user, oldest first (``GET /admin/users``)."""
        rows = await self._db.fetchall(
            f"SELECT {_USER_COLUMNS} FROM console_users ORDER BY created_at_ms"
        )
        return [user_from_row(row) for row in rows]

    async def by_email(self, email: str) -> User | None:
        row = await self._db.fetchone(
            f"SELECT {_USER_COLUMNS} FROM console_users WHERE email = ?",
            (email.strip().lower(),),
        )
        return None if row is None else user_from_row(row)

    async def authenticate(self, email: str, password: str) -> User | None:
        """The active user with this email and password, else None.

        An unknown email still costs one argon2 verification, so response times do not
        tell which emails have accounts.
        """
        row = await self._db.fetchone(
            f"SELECT {_USER_COLUMNS}, password_hash FROM console_users WHERE email = ?",
            (email.strip().lower(),),
        )
        ok = await self._passwords.verify(None if row is None else row["password_hash"], password)
        if row is None or not ok:
            return None
        user = user_from_row(row)
        return user if user.status == "active" else None

    async def change_password(self, user: User, new_password: str, *, actor: str) -> User:
        """Set a new password and end every session of the user (a new session version)."""
        password_hash = await self._passwords.hash(new_password)
        now = _now_ms()

        def write(conn: sqlite3.Connection) -> int:
            conn.execute(
                "UPDATE console_users SET password_hash = ?, "
                "session_version = session_version + 1, updated_at_ms = ? WHERE id = ?",
                (password_hash, now, user.id),
            )
            conn.execute("DELETE FROM console_sessions WHERE user_id = ?", (user.id,))
            self._audit(conn, actor, "user.password", user.id, {})
            row = conn.execute(
                "SELECT session_version FROM console_users WHERE id = ?", (user.id,)
            ).fetchone()
            return int(row[0])

        version = await self._db.write(write)
        return msgspec.structs.replace(user, session_version=version)

    # -- memberships ------------------------------------------------------------------

    async def memberships(self, user_id: str) -> list[Membership]:
        rows = await self._db.fetchall(
            "SELECT account_id, user_id, role FROM console_memberships WHERE user_id = ? "
            "ORDER BY created_at_ms",
            (user_id,),
        )
        return [Membership(r["account_id"], r["user_id"], Role(r["role"])) for r in rows]

    async def role_in(self, user_id: str, account_id: str) -> Role | None:
        row = await self._db.fetchone(
            "SELECT role FROM console_memberships WHERE account_id = ? AND user_id = ?",
            (account_id, user_id),
        )
        return None if row is None else Role(row["role"])

    async def members(self, account_id: str) -> list[Membership]:
        rows = await self._db.fetchall(
            "SELECT m.account_id, m.user_id, m.role, u.email, u.display_name "
            "FROM console_memberships m JOIN console_users u ON u.id = m.user_id "
            "WHERE m.account_id = ? ORDER BY m.created_at_ms",
            (account_id,),
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
        """Add the user to the account, or change their role there."""
        key = self._audit_key
        await self._db.write(
            lambda conn: insert_membership(conn, key, account_id, user_id, role, actor=actor)
        )

    async def remove_membership(self, account_id: str, user_id: str, *, actor: str) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM console_memberships WHERE account_id = ? AND user_id = ?",
                (account_id, user_id),
            )
            detail = {"account_id": account_id}
            self._audit(conn, actor, "member.remove", user_id, detail)

        await self._db.write(write)

    # -- who created which key (members may manage only their own) ------------------------

    async def note_key_creator(self, key_id: str, user_id: str) -> None:
        await self._db.execute_write(
            "INSERT OR REPLACE INTO console_key_creators (key_id, user_id) VALUES (?, ?)",
            (key_id, user_id),
        )

    async def keys_created_by(self, user_id: str) -> set[str]:
        rows = await self._db.fetchall(
            "SELECT key_id FROM console_key_creators WHERE user_id = ?", (user_id,)
        )
        return {row["key_id"] for row in rows}

    async def key_creators(self, account_id: str) -> dict[str, str]:
        """Key id → the e-mail of the console user who created it (keys of one account)."""
        rows = await self._db.fetchall(
            "SELECT c.key_id, u.email FROM console_key_creators c "
            "JOIN api_keys k ON k.id = c.key_id JOIN console_users u ON u.id = c.user_id "
            "WHERE k.account_id = ?",
            (account_id,),
        )
        return {row["key_id"]: row["email"] for row in rows}

    # -- internals --------------------------------------------------------------------

    def _audit(
        self,
        conn: sqlite3.Connection,
        actor: str,
        action: str,
        target: str,
        detail: dict[str, Any],
    ) -> None:
        append_audit(
            conn, self._audit_key, actor=actor, action=action, target=target, detail=detail
        )
