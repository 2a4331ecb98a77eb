"""Reading usage rows in PostgreSQL: the admin summary and the monthly export.

The queries are ``relay.usage.queries``'s own (the same filters, groups, nearest-rank
percentiles and ``(ts_ms, id)`` keyset pages), with PostgreSQL's placeholders (``$n``),
its NULL-safe comparison for ``IS ?`` and its day expression. The usage table's index
plan (``relay.storage.schema_core``, ``schema_console``) mirrors SQLite's, so each query is
an index search.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from relay.usage.queries import (
    EXPORT_COLUMNS,
    GROUPINGS,
    ExportFormat,
    RowRange,
    SummaryFilter,
    UsageGroup,
    export_chunk,
    export_header,
    summary_groups,
    summary_queries,
)

__all__ = ["count_rows", "export_usage", "usage_summary"]

_PAGE_ROWS = 1000
_PG_GROUPINGS = {
    **GROUPINGS,
    "day": "to_char(to_timestamp(ts_ms / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}
_PLACEHOLDER = re.compile(r"\bIS \?|\?")


def to_pg(sql: str) -> str:
    """SQLite's ``?`` placeholders as ``$1, $2, …`` (``IS ?``: ``IS NOT DISTINCT FROM``)."""
    count = 0

    def number(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"IS NOT DISTINCT FROM ${count}" if match.group(0) != "?" else f"${count}"

    return _PLACEHOLDER.sub(number, sql)


async def usage_summary(pool: Any, spec: SummaryFilter) -> list[UsageGroup]:
    (totals_sql, totals_params), (pct_sql, pct_params) = summary_queries(spec, _PG_GROUPINGS)
    totals = await pool.fetch(to_pg(totals_sql), *totals_params)
    return summary_groups(totals, await pool.fetch(to_pg(pct_sql), *pct_params))


async def count_rows(pool: Any, rows: RowRange) -> int:
    where, params = rows.where()
    value = await pool.fetchval(to_pg(f"SELECT COUNT(*) FROM {rows.table} WHERE {where}"), *params)
    return int(value or 0)


async def export_usage(pool: Any, rows: RowRange, fmt: ExportFormat) -> AsyncIterator[bytes]:
    """The rows as CSV (with a header line) or JSON Lines, one chunk per page."""
    if fmt == "csv":
        yield export_header()
    columns = ", ".join(EXPORT_COLUMNS)
    cursor_ts, cursor_id = rows.start_ms, -1
    while True:
        # The range restarts at the cursor: each page is an index search, not a rescan.
        where, params = replace(rows, start_ms=cursor_ts).where()
        page = await pool.fetch(
            to_pg(
                f"SELECT {columns} FROM {rows.table} WHERE {where}"
                " AND NOT (ts_ms = ? AND id <= ?) ORDER BY ts_ms, id LIMIT ?"
            ),
            *params,
            cursor_ts,
            cursor_id,
            _PAGE_ROWS,
        )
        if not page:
            return
        yield export_chunk(page, fmt)
        if len(page) < _PAGE_ROWS:
            return
        cursor_ts, cursor_id = page[-1]["ts_ms"], page[-1]["id"]
