"""What the console's read queries need of a store: ``fetchall`` and ``fetchone``.

``relay.storage.db.Database`` is one (SQLite); ``relay.cluster.pg_reader.PgReader`` the
other (PostgreSQL, running the same portable SQL). Rows index by position and by column
name, either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ["Reader"]


class Reader(Protocol):
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]: ...

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any: ...
