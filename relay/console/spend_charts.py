"""Where the overview's charts read spend per day and per model: a seam of two reads.

Both engines read the ``usage_daily`` rollup (``RollupCharts``: the functions of
``relay.console.log_queries``) through a ``RowReader``: the SQLite file embedded, or
PostgreSQL's rollup (kept by the elected job runner, ``relay.cluster.pg_rollup``) through
``relay.cluster.pg_reader.PgReader`` in cluster mode, where the newest requests reach it
up to ``ROLLUP_INTERVAL_S`` later.
"""

from __future__ import annotations

from typing import Protocol

from relay.console.log_queries import spend_by_model, spend_per_day
from relay.storage.reader import RowReader

__all__ = ["RollupCharts", "SpendCharts"]


class SpendCharts(Protocol):
    async def per_day(
        self, account_id: str, *, first_day: int, last_day: int
    ) -> list[tuple[int, int, int]]:
        """``(day number, cost_micros, requests)`` for each day of [first, last] (UTC)."""
        ...

    async def by_model(
        self, account_id: str, *, first_day: int, last_day: int
    ) -> list[tuple[str, int, int]]:
        """``(model, cost_micros, requests)`` over [first, last], costliest first, at most
        12, models that cost nothing left out."""
        ...


class RollupCharts:
    def __init__(self, db: RowReader) -> None:
        self._db = db

    async def per_day(
        self, account_id: str, *, first_day: int, last_day: int
    ) -> list[tuple[int, int, int]]:
        return await spend_per_day(self._db, account_id, first_day=first_day, last_day=last_day)

    async def by_model(
        self, account_id: str, *, first_day: int, last_day: int
    ) -> list[tuple[str, int, int]]:
        return await spend_by_model(self._db, account_id, first_day=first_day, last_day=last_day)
