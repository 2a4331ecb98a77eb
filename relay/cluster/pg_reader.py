"""The embedded read queries on PostgreSQL: a ``RowReader`` over an asyncpg pool.

The console's queries (``relay.console.log_queries``, ``ledger_days``, ``topups``) and the
account record reads (ledger pages, statements, exports) are SQLite's text; what differs
is translated here, once: ``?`` placeholders become ``$n``
(``relay.cluster.pg_usage_reads.to_pg``) and ``INDEXED BY`` hints are dropped (PostgreSQL's
planner picks among the same indexes). PostgreSQL's ``SUM`` over ``bigint`` is ``numeric``
(a ``Decimal``) where SQLite's is an integer, so whole decimals come back as ``int``: exact,
since they are sums of integers, and encoded as JSON numbers as the embedded answers are.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

from relay.cluster.pg_usage_reads import to_pg

__all__ = ["PgReader", "PgRow", "translate"]

_HINT = re.compile(r"\s+INDEXED BY \w+")


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    return value


class PgRow:
    """A row read like ``sqlite3.Row``: by position, by column name, ``dict()``, ``tuple()``."""

    __slots__ = ("_names", "_values")

    def __init__(self, record: Any) -> None:
        self._names = {name: i for i, name in enumerate(record.keys())}
        self._values = tuple(_plain(v) for v in record.values())

    def keys(self) -> list[str]:
        return list(self._names)

    def __getitem__(self, item: int | str) -> Any:
        return self._values[item if isinstance(item, int) else self._names[item]]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def translate(sql: str) -> str:
    return to_pg(_HINT.sub("", sql))


class PgReader:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def fetchall(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[PgRow]:
        assert not isinstance(params, Mapping), "positional parameters only"
        return [PgRow(record) for record in await self._pool.fetch(translate(sql), *params)]

    async def fetchone(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> PgRow | None:
        assert not isinstance(params, Mapping), "positional parameters only"
        record = await self._pool.fetchrow(translate(sql), *params)
        return None if record is None else PgRow(record)
