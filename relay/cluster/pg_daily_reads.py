"""The console's charts from PostgreSQL's ``usage_daily`` (kept by ``relay.cluster.pg_rollup``).

The embedded console's queries (``relay.usage.rollup``'s SQL, which
``relay.console.log_queries`` runs: spend per day, spend by model) with PostgreSQL's
placeholders, and the same shapes back: ``(day number, cost_micros, requests)`` for every
day of a range, ``(model, cost_micros, requests)`` costliest first. PostgreSQL sums
``bigint`` columns as ``numeric``; the shared row readers turn them back into ints, so no
amount ever passes through a float.

The rollup runs every few seconds on the elected instance (``relay.app``'s
``ROLLUP_INTERVAL_S``), so the newest requests reach these figures that much later; the
embedded console counts each row as it is written. The admin summary
(``/admin/usage/summary``) reads the usage rows themselves on both engines (it groups by
key and reports latency percentiles, which the rollup does not keep): see
``relay.cluster.pg_usage_reads``.
"""

from __future__ import annotations

from typing import Any

from relay.cluster.pg_usage_reads import to_pg
from relay.usage.rollup import (
    DAY_MS,
    OPEN_LAST_DAY,
    SPEND_BY_MODEL_SQL,
    SPEND_PER_DAY_SQL,
    every_day,
    first_day_of,
    model_spend,
)

__all__ = ["daily_spend", "spend_by_model", "spend_per_day"]

_SPEND_PER_DAY = to_pg(SPEND_PER_DAY_SQL)
_SPEND_BY_MODEL = to_pg(SPEND_BY_MODEL_SQL)


async def spend_per_day(
    pool: Any, account_id: str, *, first_day: int, last_day: int
) -> list[tuple[int, int, int]]:
    """``(day number, cost_micros, requests)`` for each day of [first, last] (UTC)."""
    rows = await pool.fetch(_SPEND_PER_DAY, account_id, first_day, last_day)
    return every_day(rows, first_day, last_day)


async def daily_spend(
    pool: Any, account_id: str, *, now_ms: int, days: int = 30
) -> list[tuple[int, int, int]]:
    """``(day number, cost_micros, requests)`` for each of the last ``days`` days (UTC)."""
    last = now_ms // DAY_MS
    return await spend_per_day(pool, account_id, first_day=last - days + 1, last_day=last)


async def spend_by_model(
    pool: Any,
    account_id: str,
    *,
    now_ms: int = 0,
    days: int = 30,
    first_day: int | None = None,
    last_day: int | None = None,
) -> list[tuple[str, int, int]]:
    """``(model, cost_micros, requests)`` over the last ``days`` days (or [first, last]),
    costliest first; models that cost nothing are left out."""
    first = first_day if first_day is not None else first_day_of(now_ms, days)
    last = last_day if last_day is not None else OPEN_LAST_DAY
    return model_spend(await pool.fetch(_SPEND_BY_MODEL, account_id, first, last))
