"""An account's records on PostgreSQL: the ``AccountRecords`` of cluster mode.

The reads are the embedded queries run by ``PgReader`` on the shared tables (``ledger``,
``usage``, ``payments``, ``receipts``, the console's, all mirrored with the embedded
columns: ``relay.cluster.pg_records``), so a ledger page, a statement or an export answer
from any instance exactly what the embedded relay answers for the same rows. Usage
archives are PostgreSQL's (``archives`` + ``archive_chunks``, written by the cluster's
retention), so every instance exports them, read a chunk (one row) at a time.

A deletion request is one transaction: its row, auto top-up switched off and its audit
row appended to PostgreSQL's chain (``pg_audit.append``, serialised across instances).
Two instances receiving the same request at once store one: the second insert finds the
first's row (``ON CONFLICT DO NOTHING``) and answers it, auditing nothing. Its cancellation
is likewise one transaction, the row's deletion with its ``account.deletion_cancelled``
row; two cancellations at once delete one row and audit once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from relay.cluster import pg_audit
from relay.cluster.pg_reader import PgReader
from relay.identity.account_records import (
    DELETION_CANCELLED,
    DELETION_COLUMNS,
    DELETION_REQUESTED,
    DeletionRequest,
    read_deletion_request,
)
from relay.storage.reader import RowReader

__all__ = ["PgAccountRecords"]


class PgAccountRecords:
    def __init__(self, pool: Any, audit_key: bytes) -> None:
        self._pool = pool
        self._audit_key = audit_key
        self._reader = PgReader(pool)

    @property
    def reader(self) -> RowReader:
        return self._reader

    async def tables(self) -> set[str]:
        rows = await self._pool.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        )
        return {str(row[0]) for row in rows}

    async def usage_archive_names(self, account_id: str) -> list[str]:
        rows = await self._pool.fetch(
            "SELECT a.name FROM archives a WHERE a.kind = 'usage' AND a.account_id = $1"
            " AND EXISTS (SELECT 1 FROM archive_chunks c WHERE c.name = a.name) ORDER BY a.name",
            account_id,
        )
        return [str(row["name"]) for row in rows]

    async def usage_archive_chunks(self, name: str) -> AsyncIterator[bytes]:
        seq = -1
        while True:  # keyset by seq: one chunk in memory at a time
            row = await self._pool.fetchrow(
                "SELECT seq, data FROM archive_chunks WHERE name = $1 AND seq > $2"
                " ORDER BY seq LIMIT 1",
                name,
                seq,
            )
            if row is None:
                return
            seq = int(row["seq"])
            yield bytes(row["data"])

    async def deletion_request(self, account_id: str) -> DeletionRequest | None:
        return await read_deletion_request(self._reader, account_id)

    async def record_deletion(self, request: DeletionRequest) -> DeletionRequest:
        async with self._pool.acquire() as conn, conn.transaction():
            stored = await conn.fetchval(
                "INSERT INTO deletion_requests (account_id, requested_at_ms, requested_by,"
                " erase_after_ms) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (account_id) DO NOTHING RETURNING account_id",
                request.account_id,
                request.requested_at_ms,
                request.requested_by,
                request.erase_after_ms,
            )
            if stored is None:
                row = await conn.fetchrow(
                    f"SELECT {DELETION_COLUMNS} FROM deletion_requests WHERE account_id = $1",
                    request.account_id,
                )
                return DeletionRequest(*tuple(row))
            await conn.execute(
                "UPDATE auto_topups SET enabled = 0 WHERE account_id = $1", request.account_id
            )
            await pg_audit.append(
                conn,
                self._audit_key,
                actor=request.requested_by,
                action=DELETION_REQUESTED,
                target=request.account_id,
                detail={"erase_after_ms": request.erase_after_ms},
            )
        return request

    async def cancel_deletion(self, request: DeletionRequest, actor: str) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            deleted = await conn.fetchval(
                "DELETE FROM deletion_requests WHERE account_id = $1 AND erased_at_ms IS NULL"
                " RETURNING account_id",
                request.account_id,
            )
            if deleted is None:
                return False
            await pg_audit.append(
                conn,
                self._audit_key,
                actor=actor,
                action=DELETION_CANCELLED,
                target=request.account_id,
                detail={"requested_at_ms": request.requested_at_ms},
            )
        return True
