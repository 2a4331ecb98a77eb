"""The console's SQLite read queries, run on PostgreSQL: a ``Reader`` over the pool.

The queries of ``relay.console.log_queries``, ``ledger_days``, ``topups`` and the monthly
statement are written to run on both engines; what differs is translated here, once:
SQLite's ``?`` placeholders become ``$n`` (``relay.cluster.pg_usage_reads.to_pg``) and its
``INDEXED BY`` hints are dropped (PostgreSQL's planner picks among the same indexes,
``relay.cluster.pg_records``). ``SUM`` of a ``bigint`` is a ``numeric`` in PostgreSQL: a
row's numbers come back as ``int``, as SQLite's do (money is integer micro-dollars).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

from relay.cluster.pg_usage_reads import to_pg

__all__ = ["PgReader", "PgRow"]

_HINT = re.compile(r"\s+INDEXED BY \w+")


class PgRow:
    """A row read by position or by column name, like ``sqlite3.Row``."""

    __slots__ = ("_names", "_values")

    def __init__(self, record: Any) -> None:
        self._names = {name: i for i, name in enumerate(record.keys())}
        self._values = tuple(
            int(v) if isinstance(v, Decimal) and v == v.to_integral_value() else v
            for v in record.values()
        )

    def __getitem__(self, key: int | str) -> Any:
        return self._values[key if isinstance(key, int) else self._names[key]]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._names)


def translate(sql: str) -> str:
    return to_pg(_HINT.sub("", sql))


class PgReader:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return [PgRow(record) for record in await self._pool.fetch(translate(sql), *params)]

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        record = await self._pool.fetchrow(translate(sql), *params)
        return None if record is None else PgRow(record)
