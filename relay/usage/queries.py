"""Reading the hot usage table: summaries by account, key, model or day, and exports.

Every query is bounded by a time range and filtered on indexed columns (``usage_ts``,
``usage_account_ts``, ``usage_key_id``), so it searches an index instead of scanning
millions of rows; a model filter alone narrows the time range's rows. Percentiles are
computed inside SQLite with window functions: only two rows per group come back to
Python. Exports and archives walk a range page by page with a ``(ts_ms, id)`` keyset,
so a month is never held in memory.
Only the hot table (the last 90 days) is read here; older rows live in archive files
(``relay.usage.retention``).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import msgspec

from relay.csv_cells import csv_text
from relay.storage.db import Database
from relay.usage.log import UsageRecord

__all__ = [
    "EXPORT_COLUMNS",
    "GROUPINGS",
    "ExportFormat",
    "Grouping",
    "RowRange",
    "SummaryFilter",
    "UsageGroup",
    "count_rows",
    "day_range_ms",
    "export_chunk",
    "export_header",
    "export_usage",
    "iter_pages",
    "summary_groups",
    "summary_queries",
    "usage_summary",
]

Grouping = Literal["day", "model", "key", "account"]
ExportFormat = Literal["csv", "jsonl"]
Table = Literal["usage", "audit"]

DAY_MS = 86_400_000
EXPORT_COLUMNS: tuple[str, ...] = ("id", *UsageRecord.__struct_fields__)
GROUPINGS: dict[str, str] = {
    "day": "strftime('%Y-%m-%d', ts_ms / 1000, 'unixepoch')",
    "model": "model",
    "key": "key_id",
    "account": "account_id",
}
_PAGE_ROWS = 1000


# --- ranges of rows ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RowRange:
    """Rows of one table with ``start_ms <= ts_ms < end_ms`` (and more conditions).

    ``account_id`` is only a condition when ``any_account`` is false (then ``None``
    means rows without an account); ``max_id`` pins the set of rows at the moment it
    was read, since ids only grow and rows are never updated.
    """

    table: Table
    start_ms: int
    end_ms: int
    account_id: str | None = None
    any_account: bool = True
    max_id: int | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses = ["ts_ms >= ?", "ts_ms < ?"]
        params: list[Any] = [self.start_ms, self.end_ms]
        if not self.any_account:
            clauses.append("account_id IS ?")
            params.append(self.account_id)
        if self.max_id is not None:
            clauses.append("id <= ?")
            params.append(self.max_id)
        return " AND ".join(clauses), params


async def iter_pages(
    db: Database, rows: RowRange, *, columns: str = "*", page_rows: int = _PAGE_ROWS
) -> AsyncIterator[list[sqlite3.Row]]:
    """The rows of ``rows`` in ``(ts_ms, id)`` order, ``page_rows`` at a time."""
    cursor_ts, cursor_id = rows.start_ms, -1
    while True:
        # The range restarts at the cursor, so each page is an index search, not a rescan.
        where, params = replace(rows, start_ms=cursor_ts).where()
        page = await db.fetchall(
            f"SELECT {columns} FROM {rows.table} WHERE {where} "
            "AND NOT (ts_ms = ? AND id <= ?) ORDER BY ts_ms, id LIMIT ?",
            [*params, cursor_ts, cursor_id, page_rows],
        )
        if not page:
            return
        yield page
        if len(page) < page_rows:
            return
        cursor_ts, cursor_id = page[-1]["ts_ms"], page[-1]["id"]


async def count_rows(db: Database, rows: RowRange) -> int:
    where, params = rows.where()
    row = await db.fetchone(f"SELECT COUNT(*) FROM {rows.table} WHERE {where}", params)
    return int(row[0]) if row else 0


def day_range_ms(since: str | None, until: str | None, *, today: dt.date) -> tuple[int, int]:
    """``YYYY-MM-DD`` bounds, both inclusive (UTC) → [start, end) in ms; default 30 days."""
    last = dt.date.fromisoformat(until) if until else today
    first = dt.date.fromisoformat(since) if since else last - dt.timedelta(days=29)
    if first > last:
        raise ValueError("since must not be after until")
    start_ms = int(dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC).timestamp() * 1000)
    return start_ms, start_ms + ((last - first).days + 1) * DAY_MS


# --- summaries -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SummaryFilter:
    start_ms: int
    end_ms: int
    by: Grouping = "day"
    account_id: str | None = None
    key_id: str | None = None
    model: str | None = None


class UsageGroup(msgspec.Struct):
    group: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    total_tokens: int
    cost_micros: int
    errors: int
    error_rate: float
    p50_latency_ms: int | None = None
    p95_latency_ms: int | None = None


def _summary_where(spec: SummaryFilter) -> tuple[str, list[Any]]:
    clauses = ["ts_ms >= ?", "ts_ms < ?"]
    params: list[Any] = [spec.start_ms, spec.end_ms]
    for column, value in (
        ("account_id", spec.account_id),
        ("key_id", spec.key_id),
        ("model", spec.model),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    return " AND ".join(clauses), params


def summary_queries(
    spec: SummaryFilter, groupings: Mapping[str, str] = GROUPINGS
) -> tuple[tuple[str, list[Any]], tuple[str, list[Any]]]:
    """The totals query and the latency percentiles query (exposed for EXPLAIN in tests).

    Plain SQL both engines run (PostgreSQL's copy passes its own day expression in
    ``groupings`` and numbers the placeholders: relay.cluster.pg_usage_reads)."""
    group = groupings[spec.by]
    where, params = _summary_where(spec)
    totals = (
        f"SELECT {group} AS grp, COUNT(*) AS requests, "
        "SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens, "
        "SUM(cached_tokens) AS cached_tokens, SUM(cost_micros) AS cost_micros, "
        "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS errors "
        f"FROM usage WHERE {where} GROUP BY grp ORDER BY grp NULLS FIRST"  # both engines alike
    )
    # Nearest-rank percentiles: rank ceil(p * n / 100) within each group.
    percentiles = (
        "SELECT grp, latency_ms, rn, n FROM ("
        f"SELECT {group} AS grp, latency_ms, "
        f"ROW_NUMBER() OVER (PARTITION BY {group} ORDER BY latency_ms) AS rn, "
        f"COUNT(*) OVER (PARTITION BY {group}) AS n "
        f"FROM usage WHERE {where} AND latency_ms IS NOT NULL"
        ") AS ranked WHERE rn = (n * 50 + 99) / 100 OR rn = (n * 95 + 99) / 100"
    )
    return (totals, params), (percentiles, list(params))


async def usage_summary(db: Database, spec: SummaryFilter) -> list[UsageGroup]:
    (totals_sql, totals_params), (pct_sql, pct_params) = summary_queries(spec)
    totals = await db.fetchall(totals_sql, totals_params)
    return summary_groups(totals, await db.fetchall(pct_sql, pct_params))


def summary_groups(totals: Sequence[Any], percentile_rows: Sequence[Any]) -> list[UsageGroup]:
    """The groups from the two queries' rows (either engine's rows, read by column name)."""
    latencies: dict[str | None, dict[str, int]] = {}
    for row in percentile_rows:
        n, rank = row["n"], row["rn"]
        found = latencies.setdefault(row["grp"], {})
        if rank == (n * 50 + 99) // 100:
            found["p50"] = row["latency_ms"]
        if rank == (n * 95 + 99) // 100:
            found["p95"] = row["latency_ms"]
    return [_group(row, latencies.get(row["grp"], {})) for row in totals]


def _group(row: Any, latency: dict[str, int]) -> UsageGroup:
    requests = int(row["requests"])
    prompt, completion = int(row["prompt_tokens"]), int(row["completion_tokens"])
    errors = int(row["errors"])
    return UsageGroup(
        group=row["grp"],
        requests=requests,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=int(row["cached_tokens"]),
        total_tokens=prompt + completion,
        cost_micros=int(row["cost_micros"]),
        errors=errors,
        error_rate=round(errors / requests, 4) if requests else 0.0,
        p50_latency_ms=latency.get("p50"),
        p95_latency_ms=latency.get("p95"),
    )


# --- export --------------------------------------------------------------------------------


async def export_usage(db: Database, rows: RowRange, fmt: ExportFormat) -> AsyncIterator[bytes]:
    """The rows as CSV (with a header line) or JSON Lines, one chunk per page."""
    columns = ", ".join(EXPORT_COLUMNS)
    if fmt == "csv":
        yield export_header()
    async for page in iter_pages(db, rows, columns=columns):
        yield export_chunk(page, fmt)


def export_header() -> bytes:
    """The CSV export's header line."""
    return _csv_lines([EXPORT_COLUMNS])


def export_chunk(page: Sequence[Any], fmt: ExportFormat) -> bytes:
    """One page of rows (``EXPORT_COLUMNS``, either engine's rows) as CSV or JSON Lines."""
    if fmt == "csv":
        return _csv_lines([tuple(row) for row in page])
    return b"".join(msgspec.json.encode(dict(row)) + b"\n" for row in page)


def _csv_lines(rows: list[tuple[Any, ...]]) -> bytes:
    return csv_text(rows, line_end="\n").encode()
