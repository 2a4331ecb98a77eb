"""Password reset links: a signed, one-time token emailed to the user, valid one hour.

Like invites, the token is a random id plus its HMAC; the database keeps only the id's
SHA-256 with its user and expiry. Using it marks it used in the same transaction that
changes the password (which also ends every session), so a link works exactly once.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time

from relay.console.auth.signing import sign, unsign
from relay.identity.audit import append_audit
from relay.storage.db import Database

__all__ = ["RESET_LIFETIME_MS", "PasswordResets"]

RESET_LIFETIME_MS = 3600 * 1000


def _hash(reset_id: str) -> str:
    return hashlib.sha256(reset_id.encode()).hexdigest()


def _now_ms() -> int:
    return int(time.time() * 1000)


class PasswordResets:
    def __init__(self, db: Database, signing_key: bytes, audit_key: bytes) -> None:
        self._db = db
        self._signing_key = signing_key
        self._audit_key = audit_key

    async def create(self, user_id: str, email: str) -> str:
        """A new reset token for the user (only its hash is kept)."""
        reset_id = secrets.token_urlsafe(24)
        now = _now_ms()
        audit_key = self._audit_key

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO console_password_resets (id_hash, user_id, created_at_ms, "
                "expires_at_ms) VALUES (?, ?, ?, ?)",
                (_hash(reset_id), user_id, now, now + RESET_LIFETIME_MS),
            )
            append_audit(
                conn, audit_key, actor=email, action="password.reset_requested", target=user_id,
                detail={},
            )  # fmt: skip

        await self._db.write(write)
        return sign(self._signing_key, reset_id)

    async def peek(self, token: str) -> str | None:
        """The user id behind a genuine, unused, unexpired token."""
        reset_id = unsign(self._signing_key, token)
        if reset_id is None:
            return None
        row = await self._db.fetchone(
            "SELECT user_id FROM console_password_resets "
            "WHERE id_hash = ? AND used_at_ms IS NULL AND expires_at_ms > ?",
            (_hash(reset_id), _now_ms()),
        )
        return None if row is None else str(row[0])

    async def consume(self, token: str) -> str | None:
        """Mark the token used; its user id, or None if it was not valid (or just used)."""
        reset_id = unsign(self._signing_key, token)
        if reset_id is None:
            return None
        now = _now_ms()

        def write(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "UPDATE console_password_resets SET used_at_ms = ? "
                "WHERE id_hash = ? AND used_at_ms IS NULL AND expires_at_ms > ? "
                "RETURNING user_id",
                (now, _hash(reset_id), now),
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._db.write(write)
