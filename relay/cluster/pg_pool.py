"""The cluster store's PostgreSQL connection pool, without the reset round trip.

asyncpg resets a connection each time it goes back to its pool (``SELECT
pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``): one more round trip per
operation, doubling the cost of a one-call hold or settlement. The cluster store never
leaves session state behind (no LISTEN, no session advisory locks — migrations take a
transaction-scoped one — no SET, no cursors outside a transaction), so its pool skips that
query unless a transaction was left open; asyncpg still clears its own per-connection state.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_pool"]


async def _keep_session(connection: Any) -> None:
    """Only an open transaction is undone (a call cancelled mid-flight); see the module doc."""
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 10) -> Any:
    """An ``asyncpg`` pool for ``[storage] url`` (imported here: the 'cluster' extra)."""
    import asyncpg

    return await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, reset=_keep_session)
