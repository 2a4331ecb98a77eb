"""The audit chain on PostgreSQL: the embedded chain's rows, appended by N instances.

Each row is ``relay.identity.audit.chained_row`` (the same HMAC over the same fields and
the previous row's hash), so ``verify_chain`` — the verifier of ``GET /admin/audit/verify``,
``relay audit verify`` and ``relay migrate`` — reads PostgreSQL's rows as it reads SQLite's.
The HMAC key is the server secret's subkey, from the secret file beside the configured
database path (every instance must have the same file: docs/scaling.md §2).

The chain has one head, so appends are serialised across instances: ``append`` takes a
transaction-scoped advisory lock before reading the head, inside the caller's transaction
(the admin write it records), and the lock is released by that transaction's commit or
rollback. Two instances appending at once therefore chain one after the other; a write
that rolls back leaves no audit row, and an audit row never exists without its write.
"""

from __future__ import annotations

from typing import Any

from relay.identity.audit import AUDIT_COLUMNS, VERIFY_PAGE_ROWS, chained_row, verify_pages

__all__ = ["append", "list_rows", "verify"]

# Any constant shared by every instance (distinct from the reaper's and the migrations').
_CHAIN_LOCK = 0x72656C6179 + 2


async def append(
    conn: Any,
    key: bytes,
    *,
    actor: str,
    action: str,
    target: str | None,
    detail: dict[str, Any],
) -> None:
    """Append one chained row on ``conn``, which must be inside a transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _CHAIN_LOCK)
    head = await conn.fetchrow("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")
    row = chained_row(
        key,
        (int(head["id"]), str(head["hash"])) if head is not None else None,
        actor=actor,
        action=action,
        target=target,
        detail=detail,
    )
    await conn.execute(
        f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", *row
    )


async def list_rows(pool: Any, *, limit: int, before_id: int, filters: dict[str, str]) -> list[Any]:
    """Newest first, as ``GET /admin/audit`` lists them (``filters``: action, target)."""
    where = ["id < $1"]
    params: list[Any] = [before_id]
    for column in ("action", "target"):
        if column in filters:
            params.append(filters[column])
            where.append(f"{column} = ${len(params)}")
    params.append(limit)
    query = (
        f"SELECT {AUDIT_COLUMNS} FROM audit WHERE {' AND '.join(where)}"
        f" ORDER BY id DESC LIMIT ${len(params)}"
    )
    return list(await pool.fetch(query, *params))


async def verify(pool: Any, key: bytes, *, page_size: int = VERIFY_PAGE_ROWS) -> dict[str, Any]:
    """The whole chain checked in id order, a page at a time (``verify_pages``)."""

    async def page(after_id: int | None, size: int) -> list[tuple[Any, ...]]:
        rows = await pool.fetch(
            f"SELECT {AUDIT_COLUMNS} FROM audit WHERE id > $1 ORDER BY id LIMIT $2",
            after_id if after_id is not None else -(2**62),
            size,
        )
        return [tuple(row) for row in rows]

    return await verify_pages(page, key, page_size=page_size)
