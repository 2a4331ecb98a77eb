"""Invite links: a signed, one-time token that adds its holder to an account with a role.

No email is sent: the owner copies the link and passes it on. The token is a random id
plus its HMAC (a ServerSecret subkey); the database keeps only the id's SHA-256, its
account, role and expiry. Accepting marks it used and adds the membership in one
transaction, so a link works exactly once.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time

import msgspec

from relay.console.auth.signing import sign, unsign
from relay.identity.audit import append_audit
from relay.identity.roles import Role
from relay.identity.users import User, insert_membership
from relay.storage.db import Database

__all__ = ["INVITE_LIFETIME_MS", "Invite", "InviteStore"]

INVITE_LIFETIME_MS = 7 * 24 * 3600 * 1000


class Invite(msgspec.Struct, frozen=True):
    account_id: str
    role: Role
    created_at_ms: int
    expires_at_ms: int
    # The stored hash of the invite's id: names it for revoking, reveals nothing of the link.
    ref: str = ""


def _hash(invite_id: str) -> str:
    return hashlib.sha256(invite_id.encode()).hexdigest()


def _now_ms() -> int:
    return int(time.time() * 1000)


class InviteStore:
    def __init__(self, db: Database, signing_key: bytes, audit_key: bytes) -> None:
        self._db = db
        self._signing_key = signing_key
        self._audit_key = audit_key

    async def create(self, account_id: str, role: Role, *, by: User) -> str:
        """A new invite's token (shown once; only its hash is kept)."""
        invite_id = secrets.token_urlsafe(24)
        now = _now_ms()
        audit_key = self._audit_key

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO console_invites (id_hash, account_id, role, created_by, "
                "created_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?, ?)",
                (_hash(invite_id), account_id, role.value, by.id, now, now + INVITE_LIFETIME_MS),
            )
            detail = {"role": role.value}
            append_audit(
                conn,
                audit_key,
                actor=by.email,
                action="invite.create",
                target=account_id,
                detail=detail,
            )

        await self._db.write(write)
        return sign(self._signing_key, invite_id)

    async def peek(self, token: str) -> Invite | None:
        """The invite behind a token if it is genuine, unused and unexpired."""
        invite_id = unsign(self._signing_key, token)
        if invite_id is None:
            return None
        row = await self._db.fetchone(
            "SELECT account_id, role, created_at_ms, expires_at_ms FROM console_invites "
            "WHERE id_hash = ? AND used_at_ms IS NULL AND expires_at_ms > ?",
            (_hash(invite_id), _now_ms()),
        )
        if row is None:
            return None
        return Invite(row[0], Role(row[1]), row[2], row[3])

    async def accept(self, token: str, user: User) -> Invite | None:
        """Use the invite for ``user``: None if it was not valid (or was just used)."""
        invite = await self.peek(token)
        invite_id = unsign(self._signing_key, token)
        if invite is None or invite_id is None:
            return None
        audit_key = self._audit_key
        now = _now_ms()

        def write(conn: sqlite3.Connection) -> bool:
            used = conn.execute(
                "UPDATE console_invites SET used_at_ms = ?, used_by = ? "
                "WHERE id_hash = ? AND used_at_ms IS NULL AND expires_at_ms > ?",
                (now, user.id, _hash(invite_id), now),
            )
            if used.rowcount != 1:
                return False  # another tab or person used it first
            insert_membership(
                conn, audit_key, invite.account_id, user.id, invite.role, actor=user.email
            )
            return True

        return invite if await self._db.write(write) else None

    async def pending(self, account_id: str) -> list[Invite]:
        rows = await self._db.fetchall(
            "SELECT account_id, role, created_at_ms, expires_at_ms, id_hash FROM console_invites "
            "WHERE account_id = ? AND used_at_ms IS NULL AND expires_at_ms > ? "
            "ORDER BY created_at_ms DESC LIMIT 50",
            (account_id, _now_ms()),
        )
        return [Invite(r[0], Role(r[1]), r[2], r[3], r[4]) for r in rows]

    async def revoke(self, account_id: str, ref: str, *, actor: str) -> bool:
        """End an open invite of this account now (its link then finds nothing)."""
        audit_key = self._audit_key
        now = _now_ms()

        def write(conn: sqlite3.Connection) -> bool:
            ended = conn.execute(
                "UPDATE console_invites SET expires_at_ms = ? WHERE id_hash = ? "
                "AND account_id = ? AND used_at_ms IS NULL AND expires_at_ms > ?",
                (now, ref, account_id, now),
            )
            if ended.rowcount != 1:
                return False
            append_audit(
                conn, audit_key, actor=actor, action="invite.revoke", target=account_id, detail={}
            )
            return True

        return bool(await self._db.write(write))
