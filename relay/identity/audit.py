"""The audit trail: every admin action as an insert-only, hash-chained row.

Each row's ``hash`` is HMAC-SHA256 (key kept outside the database, see
``relay.identity.server_secret``) over its own fields and the previous row's hash, so editing,
inserting or deleting a row in the middle breaks the chain at that row.
``verify_chain`` walks it and reports the first broken link. Rows are written by the
single writer, inside the same transaction as the change they describe.
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from relay.storage.reader import RowReader

__all__ = [
    "AUDIT_COLUMNS",
    "ChainReport",
    "append_audit",
    "chained_row",
    "row_hash",
    "verify_chain",
    "verify_pages",
    "verify_stored_chain",
]

# The columns a chain check reads, in the order ``verify_chain`` expects.
AUDIT_COLUMNS = "id, ts_ms, actor, action, target, detail, prev_hash, hash"
VERIFY_PAGE_ROWS = 1000

_encode = msgspec.json.Encoder(order="sorted").encode


def row_hash(
    key: bytes,
    *,
    row_id: int,
    ts_ms: int,
    actor: str,
    action: str,
    target: str | None,
    detail: str,
    prev_hash: str,
) -> str:
    message = _encode([row_id, ts_ms, actor, action, target, detail, prev_hash])
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def chained_row(
    key: bytes,
    last: tuple[int, str] | None,
    *,
    actor: str,
    action: str,
    target: str | None,
    detail: dict[str, Any],
) -> tuple[int, int, str, str, str | None, str, str, str]:
    """The row that follows ``last`` (its id and hash; None: the chain's first row), in
    ``AUDIT_COLUMNS`` order. Both engines append exactly this row (relay.cluster.pg_audit)."""
    row_id = (last[0] + 1) if last else 1
    prev_hash = last[1] if last else ""
    ts_ms = int(time.time() * 1000)
    detail_text = _encode(detail).decode()
    digest = row_hash(
        key,
        row_id=row_id,
        ts_ms=ts_ms,
        actor=actor,
        action=action,
        target=target,
        detail=detail_text,
        prev_hash=prev_hash,
    )
    return (row_id, ts_ms, actor, action, target, detail_text, prev_hash, digest)


def append_audit(
    conn: sqlite3.Connection,
    key: bytes,
    *,
    actor: str,
    action: str,
    target: str | None,
    detail: dict[str, Any],
) -> None:
    """Insert one chained row; call inside the writer's transaction for the change."""
    last = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    row = chained_row(
        key,
        (last[0], last[1]) if last else None,
        actor=actor,
        action=action,
        target=target,
        detail=detail,
    )
    conn.execute(
        "INSERT INTO audit (id, ts_ms, actor, action, target, detail, prev_hash, hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        row,
    )


class ChainReport(msgspec.Struct):
    ok: bool
    rows: int
    first_id: int | None = None
    last_id: int | None = None
    broken_at: int | None = None
    reason: str | None = None


def verify_chain(rows: list[sqlite3.Row] | list[tuple[Any, ...]], key: bytes) -> ChainReport:
    """Check rows (id, ts_ms, actor, action, target, detail, prev_hash, hash) in id order.

    The first row is trusted to start the chain (older rows may have been archived);
    every later row must link to its predecessor and carry its own correct hash.
    """
    prev: str | None = None
    prev_id: int | None = None
    for row in rows:
        row_id, ts_ms, actor, action, target, detail, prev_hash, digest = tuple(row)
        if prev is not None and (prev_hash != prev or row_id != (prev_id or 0) + 1):
            return _broken(rows, row_id, "does not link to the row before it")
        expected = row_hash(
            key,
            row_id=row_id,
            ts_ms=ts_ms,
            actor=actor,
            action=action,
            target=target,
            detail=detail,
            prev_hash=prev_hash,
        )
        if not hmac.compare_digest(expected, digest):
            return _broken(rows, row_id, "its contents do not match its hash")
        prev, prev_id = digest, row_id
    return ChainReport(
        ok=True,
        rows=len(rows),
        first_id=tuple(rows[0])[0] if rows else None,
        last_id=prev_id,
    )


def _broken(rows: list[Any], row_id: int, reason: str) -> ChainReport:
    return ChainReport(ok=False, rows=len(rows), broken_at=row_id, reason=reason)


async def verify_stored_chain(
    db: RowReader, key: bytes, *, page_size: int = VERIFY_PAGE_ROWS
) -> dict[str, Any]:
    """Check every audit row of the store (SQLite, or PostgreSQL through its ``PgReader``)
    in id order (``verify_pages``)."""

    async def page(after_id: int | None, size: int) -> list[tuple[Any, ...]]:
        return await _chain_page(db, after_id, size)

    return await verify_pages(page, key, page_size=page_size)


ChainPage = Callable[[int | None, int], Awaitable[list[tuple[Any, ...]]]]


async def verify_pages(
    fetch_page: ChainPage, key: bytes, *, page_size: int = VERIFY_PAGE_ROWS
) -> dict[str, Any]:
    """Check every audit row in id order, ``page_size`` rows per read (``fetch_page(after_id,
    size)``: the rows after ``after_id``, None for the first page), on either engine.

    Each page is checked together with the last row of the page before it, so a link
    across a page boundary is checked like any other. The answer counts the rows found
    intact (all of them when ``ok``) and names the last intact one in ``last_id``.
    """
    carry: tuple[Any, ...] | None = None
    first_id: int | None = None
    intact = 0
    while True:
        page = await fetch_page(carry[0] if carry is not None else None, page_size)
        if not page:
            break
        if first_id is None:
            first_id = page[0][0]
        report = verify_chain([carry, *page] if carry is not None else page, key)
        if not report.ok:
            good = [row for row in page if row[0] < (report.broken_at or 0)]
            last_good = good[-1] if good else carry
            return _report(intact + len(good), first_id, last_good, report.broken_at, report.reason)
        intact += len(page)
        carry = page[-1]
    return _report(intact, first_id, carry, None, None)


async def _chain_page(db: RowReader, after_id: int | None, size: int) -> list[tuple[Any, ...]]:
    rows = await db.fetchall(
        f"SELECT {AUDIT_COLUMNS} FROM audit WHERE id > ? ORDER BY id LIMIT ?",
        (after_id if after_id is not None else -(2**62), size),
    )
    return [tuple(row) for row in rows]


def _report(
    intact: int,
    first_id: int | None,
    last_good: tuple[Any, ...] | None,
    broken_at: int | None,
    reason: str | None,
) -> dict[str, Any]:
    return {
        "ok": broken_at is None,
        "rows": intact,
        "first_id": first_id,
        "last_id": last_good[0] if last_good is not None else None,
        "broken_at": broken_at,
        "reason": reason,
    }
