"""Where an account's records are read and its deletion request written: the seam.

The admin routes for the ledger, the statement, the export and the deletion request (and
the console's) hold the logic once (``relay.money.ledger``, ``relay.money.invoices``,
``relay.identity.data_rights``) and reach the storage engine through an
``AccountRecords``: ``SqliteAccountRecords`` here is the embedded one;
``relay.cluster.pg_account_records.PgAccountRecords`` is the cluster one (PostgreSQL, the
audit row in PostgreSQL's chain). Reads are SQLite's query text on either engine
(``reader``, a ``RowReader``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import msgspec

from relay.identity.audit import append_audit
from relay.storage.db import Database
from relay.storage.reader import RowReader

__all__ = [
    "DELETION_COLUMNS",
    "AccountRecords",
    "DeletionRequest",
    "ARCHIVE_READ_BYTES",
    "DELETION_CANCELLED",
    "SqliteAccountRecords",
    "read_deletion_request",
]


class DeletionRequest(msgspec.Struct, frozen=True):
    account_id: str
    requested_at_ms: int
    requested_by: str
    erase_after_ms: int
    erased_at_ms: int | None = None
    pseudonym: str | None = None


DELETION_COLUMNS = ", ".join(DeletionRequest.__struct_fields__)
_SELECT_DELETION = f"SELECT {DELETION_COLUMNS} FROM deletion_requests WHERE account_id = ?"
DELETION_REQUESTED = "account.deletion_requested"
DELETION_CANCELLED = "account.deletion_cancelled"
_CANCEL_DELETION = "DELETE FROM deletion_requests WHERE account_id = ? AND erased_at_ms IS NULL"
# An archive file is read this much at a time (PostgreSQL's chunks are ARCHIVE_CHUNK_BYTES).
ARCHIVE_READ_BYTES = 1 << 20


async def read_deletion_request(reader: RowReader, account_id: str) -> DeletionRequest | None:
    row = await reader.fetchone(_SELECT_DELETION, (account_id,))
    return None if row is None else DeletionRequest(*tuple(row))


class AccountRecords(Protocol):
    @property
    def reader(self) -> RowReader: ...

    async def tables(self) -> set[str]:
        """The tables this database has (the console's exist only once it ran)."""
        ...

    async def usage_archive_names(self, account_id: str) -> list[str]:
        """The account's usage archives, by name; one whose bytes are gone is left out."""
        ...

    def usage_archive_chunks(self, name: str) -> AsyncIterator[bytes]:
        """One archive's gzip bytes, a bounded piece at a time (never the whole file)."""
        ...

    async def deletion_request(self, account_id: str) -> DeletionRequest | None: ...

    async def record_deletion(self, request: DeletionRequest) -> DeletionRequest:
        """Store the request, switch auto top-up off and append its audit row, in one
        transaction; answers the stored request (an earlier one stays, unaudited again)."""
        ...

    async def cancel_deletion(self, request: DeletionRequest, actor: str) -> bool:
        """Delete the pending (not yet erased) request and append its audit row, in one
        transaction; False (and no audit row) when there was none left to delete."""
        ...


class SqliteAccountRecords:
    """The embedded records: the single writer's transactions, archive files on disk."""

    def __init__(self, db: Database, audit_key: bytes, archive_dir: Path | None = None) -> None:
        self._db = db
        self._audit_key = audit_key
        self._archive_dir = archive_dir

    @property
    def reader(self) -> RowReader:
        return self._db

    async def tables(self) -> set[str]:
        rows = await self._db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {str(row[0]) for row in rows}

    async def usage_archive_names(self, account_id: str) -> list[str]:
        archive_dir = self._archive_dir
        if archive_dir is None or "archives" not in await self.tables():
            return []
        rows = await self._db.fetchall(
            "SELECT name FROM archives WHERE kind = 'usage' AND account_id = ? ORDER BY name",
            (account_id,),
        )
        names = [str(row["name"]) for row in rows]
        # A file gone from disk is left out, as it always was (its record stays for the operator).
        return await asyncio.to_thread(lambda: [n for n in names if (archive_dir / n).is_file()])

    async def usage_archive_chunks(self, name: str) -> AsyncIterator[bytes]:
        assert self._archive_dir is not None
        with (self._archive_dir / name).open("rb") as file:
            while chunk := await asyncio.to_thread(file.read, ARCHIVE_READ_BYTES):
                yield chunk

    async def deletion_request(self, account_id: str) -> DeletionRequest | None:
        return await read_deletion_request(self._db, account_id)

    async def record_deletion(self, request: DeletionRequest) -> DeletionRequest:
        audit_key = self._audit_key

        def write(conn: sqlite3.Connection) -> DeletionRequest:
            stored = conn.execute(
                "INSERT INTO deletion_requests (account_id, requested_at_ms, requested_by, "
                "erase_after_ms) VALUES (?, ?, ?, ?) ON CONFLICT (account_id) DO NOTHING",
                (
                    request.account_id,
                    request.requested_at_ms,
                    request.requested_by,
                    request.erase_after_ms,
                ),
            ).rowcount
            if not stored:
                row = conn.execute(_SELECT_DELETION, (request.account_id,)).fetchone()
                return DeletionRequest(*tuple(row))
            conn.execute(
                "UPDATE auto_topups SET enabled = 0 WHERE account_id = ?", (request.account_id,)
            )
            append_audit(
                conn,
                audit_key,
                actor=request.requested_by,
                action=DELETION_REQUESTED,
                target=request.account_id,
                detail={"erase_after_ms": request.erase_after_ms},
            )
            return request

        return await self._db.write(write)

    async def cancel_deletion(self, request: DeletionRequest, actor: str) -> bool:
        audit_key = self._audit_key

        def write(conn: sqlite3.Connection) -> bool:
            if not conn.execute(_CANCEL_DELETION, (request.account_id,)).rowcount:
                return False
            append_audit(
                conn,
                audit_key,
                actor=actor,
                action=DELETION_CANCELLED,
                target=request.account_id,
                detail={"requested_at_ms": request.requested_at_ms},
            )
            return True

        return await self._db.write(write)
