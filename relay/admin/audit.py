"""Admin handlers for the audit trail: reading it, and checking its hash chain.

``GET /admin/audit`` lists rows newest first (filters: ``action``, ``target``; paging:
``limit``, ``before_id``). ``GET /admin/audit/verify`` walks the whole chain in id order,
a page at a time so a long trail never sits in memory at once, and reports the first
broken link. In cluster mode both read PostgreSQL's chain (``relay.cluster.pg_audit``).
The HMAC key lives in the server secret file beside the database, never in
it, so a copy of the database alone cannot re-forge a consistent chain.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from relay.admin.common import admin_route, iso
from relay.cluster import pg_audit
from relay.errors import InvalidRequest
from relay.http.responses import json_response
from relay.identity.audit import AUDIT_COLUMNS, verify_stored_chain
from relay.state import RelayState

__all__ = ["audit_routes", "verify_stored_chain"]

_MAX_LIST_ROWS = 1000


def audit_routes() -> list[BaseRoute]:
    return [
        Route("/admin/audit", list_audit, methods=["GET"]),
        Route("/admin/audit/verify", verify_audit, methods=["GET"]),
    ]


# --- listing -----------------------------------------------------------------------------


def _int_param(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer", param=name) from None
    # Clamped: SQLite integers are 64-bit, and no row id is beyond 2**62.
    return max(-(2**62), min(value, 2**62))


def _detail(text: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:  # a hand-edited row: show it as stored, verify will flag it
        return text


def _audit_view(row: Any) -> dict[str, Any]:
    return {
        "id": row["id"],
        "ts_ms": row["ts_ms"],
        "at": iso(row["ts_ms"]) if isinstance(row["ts_ms"], int) else None,
        "actor": row["actor"],
        "action": row["action"],
        "target": row["target"],
        "detail": _detail(row["detail"]),
        "hash": row["hash"],
    }


@admin_route
async def list_audit(request: Request, state: RelayState) -> Response:
    limit = min(_MAX_LIST_ROWS, max(1, _int_param(request, "limit", 100)))
    before = _int_param(request, "before_id", 2**62)
    if state.cluster is not None:  # the chain lives in PostgreSQL
        filters = {c: v for c in ("action", "target") if (v := request.query_params.get(c))}
        found = await pg_audit.list_rows(
            state.cluster.pool, limit=limit, before_id=before, filters=filters
        )
        return json_response({"data": [_audit_view(row) for row in found]})
    where = ["id < ?"]
    params: list[Any] = [before]
    for column in ("action", "target"):
        value = request.query_params.get(column)
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    rows = await state.db.fetchall(
        f"SELECT {AUDIT_COLUMNS} FROM audit WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
        (*params, limit),
    )
    return json_response({"data": [_audit_view(row) for row in rows]})


# --- verifying ---------------------------------------------------------------------------


def _audit_key(state: RelayState) -> bytes:
    return state.store.audit_key


@admin_route
async def verify_audit(request: Request, state: RelayState) -> Response:
    if state.cluster is not None:  # the chain lives in PostgreSQL
        return json_response(await pg_audit.verify(state.cluster.pool, _audit_key(state)))
    report = await verify_stored_chain(state.db, _audit_key(state))
    return json_response(report)
