"""Usage rows in PostgreSQL: one multi-row INSERT per settler batch.

The columns are the embedded ``usage`` table's (``relay.usage.log.UsageRecord``), so a row
reads the same on both engines. Rows are written inside the settler's transaction, beside
the settlements of the same batch: one commit records and bills (relay.cluster.settler).
A replayed batch (its commit's answer was lost) inserts nothing twice: ``request_id`` is
unique and a conflict is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from relay.usage.log import UsageRecord

__all__ = ["RESPONSE_OWNER_SQL", "insert_usage", "response_provider"]

_COLUMNS = tuple(UsageRecord.__struct_fields__)
_TYPES = {
    "ts_ms": "bigint",
    "status": "integer",
    "stream": "integer",
    "usage_estimated": "integer",
    "prompt_tokens": "bigint",
    "completion_tokens": "bigint",
    "cached_tokens": "bigint",
    "cache_write_tokens": "bigint",
    "units": "bigint",
    "cost_micros": "bigint",
    "latency_ms": "bigint",
    "ttfb_ms": "bigint",
}
_INSERT = (
    f"INSERT INTO usage ({', '.join(_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"${i + 1}::{_TYPES.get(c, 'text')}[]" for i, c in enumerate(_COLUMNS))
    + ") ON CONFLICT (request_id) DO NOTHING"
)


def _value(column: str, value: Any) -> Any:
    # SQLite stores booleans as 0/1; the PostgreSQL columns mirror that.
    if column in ("stream", "usage_estimated"):
        return int(bool(value))
    return value


async def insert_usage(conn: Any, records: Sequence[UsageRecord]) -> None:
    """Insert ``records`` in one statement (one round trip) on ``conn``'s transaction."""
    if not records:
        return
    columns = [[_value(c, getattr(r, c)) for r in records] for c in _COLUMNS]
    await conn.execute(_INSERT, *columns)


# Searches the partial index usage_responses (schema entry 14), as embedded.
RESPONSE_OWNER_SQL = (
    "SELECT provider FROM usage WHERE account_id IS NOT DISTINCT FROM $1"
    " AND upstream_request_id = $2 AND endpoint = 'responses' ORDER BY id DESC LIMIT 1"
)


async def response_provider(pool: Any, account_id: str | None, response_id: str) -> str | None:
    """The provider that created a Responses API object for this account (``/v1/responses/
    {id}`` retrieve and delete), from its usage row: the same question as the embedded
    handler asks SQLite, so one account never reaches another's objects."""
    value = await pool.fetchval(RESPONSE_OWNER_SQL, account_id, response_id)
    return None if value is None else str(value)
