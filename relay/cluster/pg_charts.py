"""The console's spend charts in cluster mode, current to the last recorded request.

Embedded, ``usage_daily`` counts a usage row in the row's own transaction, so the
overview's charts (and its "spend, last N days" total, their sum) include a request the
moment it is answered. In cluster mode the elected runner rolls rows up every
``ROLLUP_INTERVAL_S`` (``relay.cluster.pg_rollup``): the rollup alone would show a balance
that dropped beside a spend total that did not rise, for up to that long. So each read is
the rollup plus the rows above its mark (the *tail*), both read in ONE snapshot: the mark
and the totals it covers commit together, so a row is counted once, in one or the other.

Both reads are bounded: the rollup's rows of one account over the chosen days (one per
day, or one per model), and the tail's rows of that account above the mark (the
``(account_id, id)`` index), at most ``TAIL_ROWS``, a few seconds of traffic while the
runner keeps up. Should the runner stop (no leader for a long while), the tail is cut at
``TAIL_ROWS`` and the charts lag as the rollup alone would; never more than that.

The answers have the shapes of ``relay.console.spend_charts.SpendCharts``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from relay.cluster.pg_reader import translate
from relay.usage.rollup import DAY_MS, SPEND_PER_DAY_SQL, every_day, model_spend

__all__ = ["TAIL_ROWS", "PgExactCharts"]

# The most tail rows one read sums: ten seconds of a busy account's requests are far fewer.
TAIL_ROWS = 20_000

_MARK = "SELECT rolled_through_id FROM usage_rollup"

# The rows of one account above the mark in [first day, last day], as the rollup would
# sum them ('' for a missing model): parameters (account, mark, first day, last day, limit).
_TAIL = f"""
SELECT ts_ms / {DAY_MS} AS day, COALESCE(model, '') AS model, cost_micros
  FROM usage WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $5
"""
_TAIL_PER_DAY = f"""
SELECT day, SUM(cost_micros), count(*) FROM ({_TAIL}) AS tail
 WHERE day >= $3 AND day <= $4 GROUP BY day
"""
_TAIL_BY_MODEL = f"""
SELECT model, SUM(cost_micros), count(*) FROM ({_TAIL}) AS tail
 WHERE day >= $3 AND day <= $4 GROUP BY model
"""
_ROLLUP_PER_DAY = translate(SPEND_PER_DAY_SQL)  # the embedded console's read
# Every model's rollup totals over the days (the top 12 is taken after the tail is added).
_ROLLUP_BY_MODEL = """
SELECT model, SUM(cost_micros), SUM(requests) FROM usage_daily
 WHERE account_id = $1 AND day >= $2 AND day <= $3 GROUP BY model
"""
_MODELS_SHOWN = 12


class PgExactCharts:
    """``SpendCharts`` over PostgreSQL: the rollup and its tail, in one snapshot."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @asynccontextmanager
    async def _snapshot(self) -> AsyncIterator[tuple[Any, int]]:
        """A read-only snapshot and the rollup's mark in it."""
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            yield conn, int(await conn.fetchval(_MARK))

    async def per_day(
        self, account_id: str, *, first_day: int, last_day: int
    ) -> list[tuple[int, int, int]]:
        async with self._snapshot() as (conn, mark):
            rolled = await conn.fetch(_ROLLUP_PER_DAY, account_id, first_day, last_day)
            tail = await conn.fetch(_TAIL_PER_DAY, account_id, mark, first_day, last_day, TAIL_ROWS)
        days = [(day, cost, n) for day, (cost, n) in _added(rolled, tail).items()]
        return every_day(days, first_day, last_day)

    async def by_model(
        self, account_id: str, *, first_day: int, last_day: int
    ) -> list[tuple[str, int, int]]:
        async with self._snapshot() as (conn, mark):
            rolled = await conn.fetch(_ROLLUP_BY_MODEL, account_id, first_day, last_day)
            tail = await conn.fetch(
                _TAIL_BY_MODEL, account_id, mark, first_day, last_day, TAIL_ROWS
            )
        # The embedded SQL's order and cut: costliest first, then by name; none free.
        shown = sorted(
            ((model, cost, n) for model, (cost, n) in _added(rolled, tail).items() if cost > 0),
            key=lambda row: (-row[1], row[0]),
        )
        return model_spend(shown[:_MODELS_SHOWN])


def _added(*parts: list[Any]) -> dict[Any, tuple[int, int]]:
    """(group, cost, requests) rows of several reads summed per group, as ints (PostgreSQL's
    ``numeric`` sums converted exactly, never through float)."""
    totals: dict[Any, tuple[int, int]] = {}
    for rows in parts:
        for group, cost, requests in rows:
            before = totals.get(group, (0, 0))
            totals[group] = (before[0] + int(cost), before[1] + int(requests))
    return totals
