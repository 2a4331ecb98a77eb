"""The console's reads of usage: request logs with filters, and spend rolled up per day.

Every query names its index (``INDEXED BY``), so a page costs a few B-tree seeks and at
most one page of rows even with a million usage rows:

* logs: keyset pagination on ``id`` (newest first) over ``usage_account_id``,
  ``usage_key_id`` or ``usage_account_model_id``, or their partial twins holding only
  failed requests when the filter asks for errors;
* a time range becomes an ``id`` range first (two seeks on ``usage_ts``): rows are written
  when a request ends, at most ``_MAX_REQUEST_SPAN_MS`` after their ``ts_ms``, so ids and
  times agree up to that span; the exact ``ts_ms`` test then runs on that range only;
* charts read ``usage_daily``, summed per account, day and model by an upsert next to
  each usage insert (``relay.usage.rollup``).

The SQL runs on PostgreSQL too (``relay.cluster.pg_reader.PgReader`` drops the ``INDEXED
BY`` hints and numbers the placeholders), where ``usage`` has no B-tree on ``ts_ms`` (a
BRIN index): there the time range is filtered directly, without the id range.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec

from relay.errors import InvalidRequest
from relay.storage.db import Database
from relay.storage.reader import RowReader
from relay.usage.rollup import (
    OPEN_LAST_DAY,
    SPEND_BY_MODEL_SQL,
    SPEND_PER_DAY_SQL,
    every_day,
    first_day_of,
    model_spend,
)

__all__ = [
    "DAY_MS",
    "NO_MODEL_LABEL",
    "LogFilter",
    "LogTotals",
    "daily_spend",
    "log_entry",
    "log_page",
    "log_query",
    "log_rows",
    "log_totals",
    "recent_errors",
    "spend_by_key",
    "spend_by_model",
    "spend_per_day",
]

DAY_MS = 86_400_000
NO_MODEL_LABEL = "requests without a model"
_MAX_REQUEST_SPAN_MS = DAY_MS
_LOG_COLUMNS = (
    "id, request_id, ts_ms, key_id, endpoint, model, provider, status, error_code, stream, "
    "prompt_tokens, completion_tokens, cached_tokens, units, cost_micros, usage_estimated, "
    "latency_ms, ttfb_ms"
)
# One request in full (still metadata only: docs/architecture.md §5).
_ENTRY_COLUMNS = _LOG_COLUMNS + ", upstream_model, upstream_request_id, cache_write_tokens"
_NO_ID = 2**62


class LogFilter(msgspec.Struct, frozen=True):
    key_id: str = ""
    model: str = ""
    status: str = ""  # "", "ok", "error" or a three-digit HTTP status
    since: str = ""  # YYYY-MM-DD, UTC, inclusive
    until: str = ""  # YYYY-MM-DD, UTC, inclusive

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> LogFilter:
        found = cls(
            key_id=params.get("key", "").strip(),
            model=params.get("model", "").strip(),
            status=params.get("status", "").strip(),
            since=params.get("since", "").strip(),
            until=params.get("until", "").strip(),
        )
        found.time_range()  # refuses bad dates now, not half-way through a CSV
        if found.status not in ("", "ok", "error") and not (
            found.status.isdigit() and len(found.status) == 3
        ):
            raise InvalidRequest("status must be ok, error or an HTTP status", param="status")
        return found

    def time_range(self) -> tuple[int | None, int | None]:
        """[since, until + 1 day) in unix ms; None where open."""
        return _day_start(self.since, "since"), _day_start(self.until, "until", plus_days=1)

    def query(self) -> dict[str, str]:
        """The non-empty filters, for links (next page, CSV export)."""
        names = {"key": self.key_id, "model": self.model, "status": self.status}
        names |= {"since": self.since, "until": self.until}
        return {name: value for name, value in names.items() if value}


def _day_start(text: str, name: str, *, plus_days: int = 0) -> int | None:
    if not text:
        return None
    try:
        day = dt.date.fromisoformat(text) + dt.timedelta(days=plus_days)
    except (ValueError, OverflowError):  # 9999-12-31 + 1 day is past Python's dates
        raise InvalidRequest(f"{name} must be a date (YYYY-MM-DD)", param=name) from None
    return int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp() * 1000)


async def _id_bounds(db: RowReader, flt: LogFilter) -> tuple[int, int]:
    """An id range (exclusive) that holds every row of the filter's time range."""
    since, until = flt.time_range()
    low, high = -1, _NO_ID
    if not isinstance(db, Database):  # PostgreSQL: no usage_ts to seek (see above)
        return low, high
    if since is not None:
        row = await db.fetchone(
            "SELECT id FROM usage INDEXED BY usage_ts WHERE ts_ms < ? ORDER BY ts_ms DESC LIMIT 1",
            (since - _MAX_REQUEST_SPAN_MS,),
        )
        low = row[0] if row is not None else -1
    if until is not None:
        row = await db.fetchone(
            "SELECT id FROM usage INDEXED BY usage_ts WHERE ts_ms >= ? ORDER BY ts_ms LIMIT 1",
            (until + _MAX_REQUEST_SPAN_MS,),
        )
        high = row[0] if row is not None else _NO_ID
    return low, high


def _where(account_id: str, flt: LogFilter) -> tuple[str, list[object], str]:
    """SQL conditions, their parameters, and the index that serves them."""
    conditions = ["account_id = ?"]
    params: list[object] = [account_id]
    errors_only = flt.status == "error" or (flt.status.isdigit() and int(flt.status) >= 400)
    if flt.status == "ok":
        conditions.append("status < 400")
    elif errors_only:
        # Written out even for one error status: it lets the partial error indexes serve.
        conditions.append("status >= 400")
    if flt.status.isdigit():
        conditions.append("status = ?")
        params.append(int(flt.status))
    if flt.model:
        conditions.append("model = ?")
        params.append(flt.model)
    if flt.key_id:
        conditions.append("key_id = ?")
        params.append(flt.key_id)
    since, until = flt.time_range()
    if since is not None:
        conditions.append("ts_ms >= ?")
        params.append(since)
    if until is not None:
        conditions.append("ts_ms < ?")
        params.append(until)
    return " AND ".join(conditions), params, _index_for(flt, errors_only)


def _index_for(flt: LogFilter, errors_only: bool) -> str:
    # Errors are rare, so error filters read the partial indexes that hold only them.
    if flt.key_id:
        return "usage_key_errors" if errors_only else "usage_key_id"
    if flt.model:
        return "usage_account_model_errors" if errors_only else "usage_account_model_id"
    return "usage_account_errors" if errors_only else "usage_account_id"


def log_query(
    account_id: str, flt: LogFilter, *, below_id: int, above_id: int, limit: int
) -> tuple[str, tuple[object, ...]]:
    """The SQL (and parameters) of one page of logs, newest first, ids in (above, below)."""
    where, params, index = _where(account_id, flt)
    sql = (
        f"SELECT {_LOG_COLUMNS} FROM usage INDEXED BY {index} "
        f"WHERE {where} AND id < ? AND id > ? ORDER BY id DESC LIMIT ?"
    )
    return sql, (*params, below_id, above_id, limit)


async def log_page(
    db: RowReader,
    account_id: str,
    flt: LogFilter,
    *,
    before_id: int | None = None,
    limit: int = 50,
) -> tuple[list[Any], int | None]:
    """Up to ``limit`` rows newest first, and the ``before_id`` of the next page (or None)."""
    low, high = await _id_bounds(db, flt)
    upper = min(high, before_id if before_id is not None else _NO_ID)
    sql, params = log_query(account_id, flt, below_id=upper, above_id=low, limit=limit + 1)
    rows = await db.fetchall(sql, params)
    if len(rows) > limit:
        return rows[:limit], rows[limit - 1]["id"]
    return rows, None


async def log_rows(
    db: RowReader, account_id: str, flt: LogFilter, *, batch: int = 1000
) -> AsyncIterator[list[Any]]:
    """Every row of the filter, newest first, in batches (for CSV export)."""
    before: int | None = None
    while True:
        rows, before = await log_page(db, account_id, flt, before_id=before, limit=batch)
        if rows:
            yield rows
        if before is None:
            return


class LogTotals(msgspec.Struct, frozen=True):
    requests: int
    errors: int
    cost_micros: int
    prompt_tokens: int
    completion_tokens: int


async def log_totals(db: RowReader, account_id: str, flt: LogFilter) -> LogTotals:
    """Sums over every row of the filter (the page shows one page of them)."""
    low, high = await _id_bounds(db, flt)
    where, params, index = _where(account_id, flt)
    row = await db.fetchone(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), 0), "
        "COALESCE(SUM(cost_micros), 0), "
        "COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) "
        f"FROM usage INDEXED BY {index} WHERE {where} AND id < ? AND id > ?",
        (*params, high, low),
    )
    assert row is not None
    return LogTotals(*(int(value) for value in tuple(row)))


async def log_entry(db: RowReader, account_id: str, request_id: str) -> Any:
    """One request of this account by its id (None for another account's)."""
    return await db.fetchone(
        f"SELECT {_ENTRY_COLUMNS} FROM usage WHERE request_id = ? AND account_id = ?",
        (request_id, account_id),
    )


async def spend_per_day(
    db: RowReader, account_id: str, *, first_day: int, last_day: int
) -> list[tuple[int, int, int]]:
    """``(day number, cost_micros, requests)`` for each day of [first, last] (UTC)."""
    rows = await db.fetchall(SPEND_PER_DAY_SQL, (account_id, first_day, last_day))
    return every_day(rows, first_day, last_day)


async def daily_spend(
    db: RowReader, account_id: str, *, now_ms: int, days: int = 30
) -> list[tuple[int, int, int]]:
    """``(day number, cost_micros, requests)`` for each of the last ``days`` days (UTC)."""
    last = now_ms // DAY_MS
    return await spend_per_day(db, account_id, first_day=last - days + 1, last_day=last)


async def spend_by_model(
    db: RowReader,
    account_id: str,
    *,
    now_ms: int = 0,
    days: int = 30,
    first_day: int | None = None,
    last_day: int | None = None,
) -> list[tuple[str, int, int]]:
    """``(model, cost_micros, requests)`` over the last ``days`` days (or [first, last]),
    costliest first; models that cost nothing are left out (they make empty bars)."""
    first = first_day if first_day is not None else first_day_of(now_ms, days)
    last = last_day if last_day is not None else OPEN_LAST_DAY
    rows = await db.fetchall(SPEND_BY_MODEL_SQL, (account_id, first, last))
    return model_spend(rows)


async def spend_by_key(
    db: RowReader, account_id: str, *, first_day: int, last_day: int
) -> list[tuple[str, int, int]]:
    """``(key id, cost_micros, requests)`` over [first, last], costliest first (no zero rows)."""
    rows = await db.fetchall(
        "SELECT key_id, SUM(cost_micros) AS cost, COUNT(*) FROM usage "
        "INDEXED BY usage_account_ts WHERE account_id = ? AND ts_ms >= ? AND ts_ms < ? "
        "GROUP BY key_id HAVING SUM(cost_micros) > 0 ORDER BY cost DESC LIMIT 12",
        (account_id, first_day * DAY_MS, (last_day + 1) * DAY_MS),
    )
    return [(row[0] or "", row[1], row[2]) for row in rows]


async def recent_errors(db: RowReader, account_id: str, *, limit: int = 5) -> list[Any]:
    return await db.fetchall(
        f"SELECT {_LOG_COLUMNS} FROM usage INDEXED BY usage_account_errors "
        "WHERE account_id = ? AND status >= 400 ORDER BY id DESC LIMIT ?",
        (account_id, limit),
    )
