"""Where the overview's charts read spend per day and per model: a seam of two reads.

Embedded, ``RollupCharts`` reads the ``usage_daily`` rollup (the functions of
``relay.console.log_queries``), which the writer keeps in each usage row's transaction. In
cluster mode the elected job runner rolls rows up every ``ROLLUP_INTERVAL_S``
(``relay.cluster.pg_rollup``), so ``relay.cluster.pg_charts.PgExactCharts`` adds the rows
above the rollup's mark: the charts are current on both engines.
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
