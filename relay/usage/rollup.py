"""Spend rolled up per account, UTC day and model (``usage_daily``), for the console's charts:
how a row is counted, and the charts' reads (SQL both engines run).

Each usage row is counted in the writer's transaction that inserts it: the row's
``DailyCount`` is a ``relay.storage.batch.PerBatch`` share, so the writer adds a batch's
counts up in memory and runs one upsert per (account, day, model) of the batch, just
before its COMMIT (``relay.usage.log``); a write that must count its row at once calls
``DailyCount.apply_batch`` with that one count. An ``AFTER INSERT`` trigger would be the
obvious alternative, but measured on SQLite 3.40 its mere presence makes every usage
insert about 3x dearer (about 15 → 50 µs per row), against about +4 µs for this upsert.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from relay.storage.batch import PerBatch
from relay.storage.multirow import insert_rows

__all__ = [
    "DAY_MS",
    "OPEN_LAST_DAY",
    "SPEND_BY_MODEL_SQL",
    "SPEND_PER_DAY_SQL",
    "DailyCount",
    "daily_count",
    "every_day",
    "first_day_of",
    "model_spend",
]

DAY_MS = 86_400_000
OPEN_LAST_DAY = 2**40  # "up to now" for day ranges

_UPSERT_HEAD = (
    "INSERT INTO usage_daily (account_id, day, model, requests, errors, cost_micros, "
    "prompt_tokens, completion_tokens)"
)
_UPSERT_TAIL = (
    " ON CONFLICT (account_id, day, model) DO UPDATE SET "
    "requests = requests + excluded.requests, errors = errors + excluded.errors, "
    "cost_micros = cost_micros + excluded.cost_micros, "
    "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
    "completion_tokens = completion_tokens + excluded.completion_tokens"
)
_UPSERT = f"{_UPSERT_HEAD} VALUES (?, ?, ?, ?, ?, ?, ?, ?){_UPSERT_TAIL}"


class DailyCount(tuple[str, int, str, int, int, int, int, int], PerBatch):
    """One usage row's share of its day's totals, added to ``usage_daily`` once per batch:
    the upsert's parameters for that row alone (account, day, model, requests, errors,
    cost, prompt tokens, completion tokens). A tuple, made by ``daily_count``: the writer
    makes one per usage row, and a tuple is built without running any Python."""

    __slots__ = ()

    @classmethod
    def apply_batch(cls, conn: sqlite3.Connection, shares: Sequence[DailyCount]) -> None:
        """Add the counts to their days' rows: one upsert per (account, day, model)."""
        if len(shares) == 1:  # a batch of one row: nothing to add up
            # [:] makes a plain tuple: sqlite3 binds a tuple subclass through its generic
            # sequence path, about 0.5 µs dearer than the copy.
            conn.execute(_UPSERT, shares[0][:])
            return
        totals: dict[tuple[str, int, str], list[int]] = {}
        for share in shares:
            key = share[:3]
            found = totals.get(key)
            if found is None:
                totals[key] = list(share[3:])
            else:
                found[0] += share[3]
                found[1] += share[4]
                found[2] += share[5]
                found[3] += share[6]
                found[4] += share[7]
        # One key per row of the statement (the totals are per key): a multi-row upsert.
        rows = [(*key, *sums) for key, sums in totals.items()]
        insert_rows(conn, _UPSERT_HEAD, rows, tail=_UPSERT_TAIL)


def daily_count(
    account_id: str | None,
    ts_ms: int,
    model: str | None,
    status: int,
    cost_micros: int,
    prompt_tokens: int,
    completion_tokens: int,
) -> DailyCount:
    """One usage row's ``DailyCount``."""
    return DailyCount(
        (
            account_id or "",
            ts_ms // DAY_MS,
            model or "",
            1,
            int(status >= 400),
            cost_micros,
            prompt_tokens,
            completion_tokens,
        )
    )


# The charts' two reads of usage_daily, in SQL both engines run (relay.cluster.pg_reader
# runs them on PostgreSQL's rollup): parameters (account, first day, last day).
SPEND_PER_DAY_SQL = (
    "SELECT day, SUM(cost_micros), SUM(requests) FROM usage_daily "
    "WHERE account_id = ? AND day >= ? AND day <= ? GROUP BY day"
)
SPEND_BY_MODEL_SQL = (
    "SELECT model, SUM(cost_micros) AS cost, SUM(requests) FROM usage_daily "
    "WHERE account_id = ? AND day >= ? AND day <= ? GROUP BY model HAVING SUM(cost_micros) > 0 "
    "ORDER BY cost DESC, model LIMIT 12"
)


def every_day(rows: Sequence[Any], first_day: int, last_day: int) -> list[tuple[int, int, int]]:
    """``SPEND_PER_DAY_SQL``'s rows (either engine's) with the days without spend as zeros."""
    found = {int(row[0]): (int(row[1]), int(row[2])) for row in rows}
    return [(day, *found.get(day, (0, 0))) for day in range(first_day, last_day + 1)]


def model_spend(rows: Sequence[Any]) -> list[tuple[str, int, int]]:
    """``SPEND_BY_MODEL_SQL``'s rows (either engine's) as ``(model, cost_micros, requests)``."""
    return [(row[0] or "requests without a model", int(row[1]), int(row[2])) for row in rows]


def first_day_of(now_ms: int, days: int) -> int:
    return now_ms // DAY_MS - days + 1
