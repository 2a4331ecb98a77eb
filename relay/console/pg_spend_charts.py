"""The overview's charts from PostgreSQL's ``usage`` rows (``SpendCharts`` of cluster mode).

Until PostgreSQL's ``usage_daily`` is filled by a rollup job, spend per day and per model
are summed from the rows themselves over the account's ``(account_id, ts_ms)`` index,
with the embedded rollup's answers: one request per usage row, a missing model as ``''``
(``relay.usage.rollup``), days as UTC day numbers.
"""

from __future__ import annotations

from typing import Any

from relay.console.log_queries import NO_MODEL_LABEL
from relay.usage.rollup import DAY_MS

__all__ = ["UsageRowCharts"]


class UsageRowCharts:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def per_day(
        self, account_id: str, *, first_day: int, last_day: int
    ) -> list[tuple[int, int, int]]:
        rows = await self._pool.fetch(
            "SELECT ts_ms / $1 AS day, SUM(cost_micros), COUNT(*) FROM usage "
            "WHERE account_id = $2 AND ts_ms >= $3 AND ts_ms < $4 GROUP BY day",
            DAY_MS,
            account_id,
            first_day * DAY_MS,
            (last_day + 1) * DAY_MS,
        )
        found = {int(row[0]): (int(row[1]), int(row[2])) for row in rows}
        return [(day, *found.get(day, (0, 0))) for day in range(first_day, last_day + 1)]

    async def by_model(
        self, account_id: str, *, first_day: int, last_day: int
    ) -> list[tuple[str, int, int]]:
        rows = await self._pool.fetch(
            "SELECT COALESCE(model, '') AS name, SUM(cost_micros) AS cost, COUNT(*) FROM usage "
            "WHERE account_id = $1 AND ts_ms >= $2 AND ts_ms < $3 GROUP BY name "
            "HAVING SUM(cost_micros) > 0 ORDER BY cost DESC, name LIMIT 12",
            account_id,
            first_day * DAY_MS,
            (last_day + 1) * DAY_MS,
        )
        return [(row[0] or NO_MODEL_LABEL, int(row[1]), int(row[2])) for row in rows]
