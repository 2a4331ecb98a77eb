"""Console sign-in sessions: a signed cookie naming a server-side session row.

The cookie holds a random session id and its HMAC (a ServerSecret subkey), so a tampered
or made-up cookie is refused before any lookup. The database keeps only the SHA-256 of
the id, so a copy of the database cannot be replayed as cookies. Each row records the
user's session version when it was made: changing the password bumps the version, which
ends every older session at once. Sign-out deletes the row.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time

import msgspec

from relay.identity.users import User, user_from_row
from relay.storage.db import Database

__all__ = [
    "PRE_SESSION_COOKIE",
    "SESSION_COOKIE",
    "SESSION_LIFETIME_MS",
    "Session",
    "SessionStore",
    "id_hash",
]

SESSION_COOKIE = "relay_session"
PRE_SESSION_COOKIE = "relay_presession"
SESSION_LIFETIME_MS = 7 * 24 * 3600 * 1000
_USER_COLUMNS = (
    "u.id, u.email, u.display_name, u.operator, u.status, u.session_version, u.created_at_ms"
)


def id_hash(session_id: str) -> str:
    """What is stored of a session, invite or reset id: its SHA-256, never the id."""
    return hashlib.sha256(session_id.encode()).hexdigest()


def _now_ms() -> int:
    return int(time.time() * 1000)


class Session(msgspec.Struct, frozen=True):
    id: str  # the raw id: only in the cookie and in memory, never stored
    user_id: str
    expires_at_ms: int


class SessionStore:
    """Sessions in SQLite; every change is durable before the answer."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, user: User) -> Session:
        session = Session(
            id=secrets.token_urlsafe(32),
            user_id=user.id,
            expires_at_ms=_now_ms() + SESSION_LIFETIME_MS,
        )
        row = (id_hash(session.id), user.id, user.session_version, _now_ms())
        expires = session.expires_at_ms

        def write(conn: sqlite3.Connection) -> None:
            # Expired sessions of this user are swept here, so the table never grows unbounded.
            conn.execute(
                "DELETE FROM console_sessions WHERE user_id = ? AND expires_at_ms < ?",
                (user.id, row[3]),
            )
            conn.execute(
                "INSERT INTO console_sessions (id_hash, user_id, session_version, "
                "created_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?)",
                (*row, expires),
            )

        await self._db.write(write)
        return session

    async def load(self, session_id: str) -> tuple[Session, User] | None:
        """The live session and its user; None if unknown, expired, outdated or disabled."""
        row = await self._db.fetchone(
            f"SELECT s.expires_at_ms, s.session_version AS made_at_version, {_USER_COLUMNS} "
            "FROM console_sessions s JOIN console_users u ON u.id = s.user_id "
            "WHERE s.id_hash = ?",
            (id_hash(session_id),),
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
        return Session(session_id, user.id, row["expires_at_ms"]), user

    async def delete(self, session_id: str) -> None:
        await self._db.execute_write(
            "DELETE FROM console_sessions WHERE id_hash = ?", (id_hash(session_id),)
        )
