"""What a read-only query needs from an engine: ``fetchall`` and ``fetchone``.

The console's reads and the account record reads (ledger pages, statements, exports) are
written once, in SQLite's dialect (``?`` placeholders), and run on either engine:
``relay.storage.db.Database`` is the embedded reader as it is;
``relay.cluster.pg_reader.PgReader`` runs the same text on PostgreSQL. A row answers
``row[0]``, ``row["name"]``, ``dict(row)`` and ``tuple(row)`` alike (``sqlite3.Row`` does,
and so does the PostgreSQL reader's row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

__all__ = ["RowReader"]


class RowReader(Protocol):
    async def fetchall(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[Any]: ...

    async def fetchone(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> Any | None: ...
