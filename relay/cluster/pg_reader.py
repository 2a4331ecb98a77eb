"""The embedded read queries on PostgreSQL: ``RowReader`` over an asyncpg pool.

The account record reads (ledger pages, statements, exports) are SQLite's text; this runs
it with PostgreSQL's placeholders (``to_pg``, as the usage reads do). One difference in
values is smoothed here: PostgreSQL's ``SUM`` over ``bigint`` is ``numeric`` (a
``Decimal`` in Python) where SQLite's is an integer, so whole decimals come back as
``int`` — exact, since they are sums of integers, and encoded as JSON numbers as the
embedded answers are.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

from relay.cluster.pg_usage_reads import to_pg

__all__ = ["PgReader", "PgRow"]


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    return value


class PgRow:
    """A row read like ``sqlite3.Row``: by position, by column name, ``dict()``, ``tuple()``."""

    __slots__ = ("_names", "_values")

    def __init__(self, record: Any) -> None:
        self._names = tuple(record.keys())
        self._values = tuple(_plain(v) for v in record.values())

    def keys(self) -> tuple[str, ...]:
        return self._names

    def __getitem__(self, item: int | str) -> Any:
        if isinstance(item, int):
            return self._values[item]
        return self._values[self._names.index(item)]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


class PgReader:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def fetchall(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[PgRow]:
        assert not isinstance(params, Mapping), "positional parameters only"
        return [PgRow(record) for record in await self._pool.fetch(to_pg(sql), *params)]

    async def fetchone(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> PgRow | None:
        assert not isinstance(params, Mapping), "positional parameters only"
        record = await self._pool.fetchrow(to_pg(sql), *params)
        return None if record is None else PgRow(record)
