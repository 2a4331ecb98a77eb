"""Admin handlers for usage summaries, monthly exports and the retention archives.

``GET /admin/usage/summary``    sums, error rate and latency percentiles per group
``GET /admin/usage/export``     one month of usage rows, streamed as CSV or JSON Lines
``GET /admin/archives``         the archive files (relay.usage.retention) with their checksums
``GET /admin/archives/{name}``  one archive file, streamed, checksum in ``x-relay-sha256``

In cluster mode the summary and the export read PostgreSQL (relay.cluster.pg_usage_reads).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import msgspec
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from relay.admin.common import admin_route, iso
from relay.cluster import pg_usage_reads
from relay.errors import InvalidRequest, NotFound
from relay.http.responses import json_response
from relay.money.invoices import month_bounds
from relay.money.pricing import micros_to_usd
from relay.state import RelayState
from relay.usage.queries import (
    GROUPINGS,
    ExportFormat,
    Grouping,
    RowRange,
    SummaryFilter,
    count_rows,
    day_range_ms,
    export_usage,
    usage_summary,
)
from relay.usage.retention import archive_dir_for

__all__ = [
    "archive_view",
    "download_archive",
    "export_usage_month",
    "list_archives",
    "show_summary",
    "usage_routes",
]

_MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}


def usage_routes() -> list[BaseRoute]:
    return [
        Route("/admin/usage/summary", show_summary, methods=["GET"]),
        Route("/admin/usage/export", export_usage_month, methods=["GET"]),
        Route("/admin/archives", list_archives, methods=["GET"]),
        Route("/admin/archives/{name}", download_archive, methods=["GET"]),
    ]


def _account_id(request: Request, state: RelayState) -> str | None:
    name = request.query_params.get("account")
    return state.store.account(name).id if name else None


def _choice(request: Request, param: str, allowed: tuple[str, ...], default: str) -> str:
    value = request.query_params.get(param, default)
    if value not in allowed:
        raise InvalidRequest(f"{param} must be one of: {', '.join(allowed)}", param=param)
    return value


@admin_route
async def show_summary(request: Request, state: RelayState) -> Response:
    """``?account=&key=&model=&by=day|model|key|account&since=YYYY-MM-DD&until=YYYY-MM-DD``."""
    params = request.query_params
    by = cast(Grouping, _choice(request, "by", tuple(GROUPINGS), "day"))
    today = dt.datetime.now(dt.UTC).date()
    try:
        start_ms, end_ms = day_range_ms(params.get("since"), params.get("until"), today=today)
    except OverflowError:  # a date at the edge of the calendar (0001-01-01, 9999-12-31)
        raise InvalidRequest("since/until: date out of range", param="since") from None
    except ValueError as exc:
        raise InvalidRequest(f"since/until: {exc} (dates are YYYY-MM-DD)", param="since") from None
    spec = SummaryFilter(
        start_ms=start_ms,
        end_ms=end_ms,
        by=by,
        account_id=_account_id(request, state),
        key_id=params.get("key") or None,
        model=params.get("model") or None,
    )
    if state.cluster is not None:  # the usage rows live in PostgreSQL
        groups = await pg_usage_reads.usage_summary(state.cluster.pool, spec)
    else:
        groups = await usage_summary(state.db, spec)
    data = [
        msgspec.structs.asdict(group) | {"cost_usd": micros_to_usd(group.cost_micros)}
        for group in groups
    ]
    return json_response(
        {
            "by": by,
            "since": _day(start_ms),
            "until": _day(end_ms - 1),
            "data": data,
        }
    )


def _day(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).date().isoformat()


@admin_route
async def export_usage_month(request: Request, state: RelayState) -> Response:
    """``?month=YYYY-MM&account=A&format=csv|jsonl``, streamed page by page from the DB.

    ``x-relay-rows`` tells the client how many rows to expect (for a progress line).
    """
    month = request.query_params.get("month", "")
    try:
        start_ms, end_ms = month_bounds(month)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="month") from None
    fmt = cast(ExportFormat, _choice(request, "format", tuple(_MEDIA_TYPES), "csv"))
    account_id = _account_id(request, state)
    rows = RowRange("usage", start_ms, end_ms, account_id=account_id, any_account=not account_id)
    if state.cluster is not None:  # the usage rows live in PostgreSQL
        total = await pg_usage_reads.count_rows(state.cluster.pool, rows)
        chunks = pg_usage_reads.export_usage(state.cluster.pool, rows, fmt)
    else:
        total = await count_rows(state.db, rows)
        chunks = export_usage(state.db, rows, fmt)
    filename = f"usage-{month}{'-' + account_id if account_id else ''}.{fmt}"
    return StreamingResponse(
        chunks,
        media_type=_MEDIA_TYPES[fmt],
        headers={
            "x-relay-rows": str(total),
            "content-disposition": f'attachment; filename="{filename}"',
        },
    )


def archive_view(row: Any) -> dict[str, Any]:
    return {
        "name": row["name"],
        "kind": row["kind"],
        "account": row["account_id"],
        "month": row["month"],
        "rows": row["rows"],
        "bytes": row["bytes"],
        "sha256": row["sha256"],
        "created": iso(row["created_at_ms"]),
    }


@admin_route
async def list_archives(request: Request, state: RelayState) -> Response:
    """``?kind=usage|audit&account=A&month=YYYY-MM`` (all optional)."""
    clauses: list[str] = ["1 = 1"]
    params: list[str] = []
    kind = request.query_params.get("kind")
    if kind:
        clauses.append("kind = ?")
        params.append(_choice(request, "kind", ("usage", "audit"), "usage"))
    account_id = _account_id(request, state)
    if account_id:
        clauses.append("account_id = ?")
        params.append(account_id)
    month = request.query_params.get("month")
    if month:
        clauses.append("month = ?")
        params.append(month)
    rows = await state.db.fetchall(
        f"SELECT * FROM archives WHERE {' AND '.join(clauses)} ORDER BY month, kind, name",
        params,
    )
    return json_response({"data": [archive_view(row) for row in rows]})


@admin_route
async def download_archive(request: Request, state: RelayState) -> Response:
    name = request.path_params["name"]
    # The file name comes from the table, never from the request: no path tricks.
    row = await state.db.fetchone("SELECT * FROM archives WHERE name = ?", [name])
    path = archive_dir_for(state.config.database_path) / str(row["name"]) if row else None
    if row is None or path is None or not path.is_file():
        raise NotFound(f"No archive {name!r}", code="archive_not_found")
    return FileResponse(
        path,
        media_type="application/gzip",
        filename=str(row["name"]),
        headers={"x-relay-sha256": str(row["sha256"]), "x-relay-rows": str(row["rows"])},
    )
