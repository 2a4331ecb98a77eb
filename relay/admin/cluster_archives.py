"""The retention archives in cluster mode: listed and served from PostgreSQL.

``GET /admin/archives`` and ``GET /admin/archives/{name}`` answer as the embedded handlers
(``relay.admin.usage``: the same filters, view, headers and bytes), but the records and the
gzip bytes are in PostgreSQL (``archives`` and ``archive_chunks``, written by
``relay.cluster.pg_retention``), so every instance serves every archive. A download is
streamed a chunk (1 MiB) at a time: one query per chunk, never the whole file in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from relay.admin.common import admin_route
from relay.admin.usage import archive_view
from relay.errors import InvalidRequest, NotFound
from relay.http.responses import json_response
from relay.state import RelayState

__all__ = ["archive_routes"]


def archive_routes() -> list[BaseRoute]:
    return [
        Route("/admin/archives", list_archives, methods=["GET"]),
        Route("/admin/archives/{name}", download_archive, methods=["GET"]),
    ]


def _pool(state: RelayState) -> Any:
    assert state.cluster is not None
    return state.cluster.pool


@admin_route
async def list_archives(request: Request, state: RelayState) -> Response:
    """``?kind=usage|audit&account=A&month=YYYY-MM`` (all optional)."""
    clauses: list[str] = ["TRUE"]
    params: list[str] = []
    query = request.query_params
    filters = {"kind": query.get("kind"), "month": query.get("month")}
    if filters["kind"] and filters["kind"] not in ("usage", "audit"):
        raise InvalidRequest("kind must be one of: usage, audit", param="kind")
    account = query.get("account")
    filters["account_id"] = state.store.account(account).id if account else None
    for column, value in filters.items():
        if value:
            params.append(value)
            clauses.append(f"{column} = ${len(params)}")
    rows = await _pool(state).fetch(
        f"SELECT * FROM archives WHERE {' AND '.join(clauses)} ORDER BY month, kind, name",
        *params,
    )
    return json_response({"data": [archive_view(row) for row in rows]})


@admin_route
async def download_archive(request: Request, state: RelayState) -> Response:
    name = request.path_params["name"]
    pool = _pool(state)
    row = await pool.fetchrow(
        "SELECT a.name, a.rows, a.sha256, count(c.seq) AS chunks FROM archives a"
        " LEFT JOIN archive_chunks c ON c.name = a.name WHERE a.name = $1 GROUP BY a.name",
        name,
    )
    if row is None or row["chunks"] == 0:
        raise NotFound(f"No archive {name!r}", code="archive_not_found")
    return StreamingResponse(
        _chunks(pool, str(row["name"]), int(row["chunks"])),
        media_type="application/gzip",
        headers={
            "content-disposition": f'attachment; filename="{row["name"]}"',
            "x-relay-sha256": str(row["sha256"]),
            "x-relay-rows": str(row["rows"]),
        },
    )


async def _chunks(pool: Any, name: str, count: int) -> AsyncIterator[bytes]:
    for seq in range(count):
        data = await pool.fetchval(
            "SELECT data FROM archive_chunks WHERE name = $1 AND seq = $2", name, seq
        )
        if data is None:  # expired while being served: end the body short (sha256 tells)
            return
        yield bytes(data)
