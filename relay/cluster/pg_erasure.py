"""Erasure on PostgreSQL: a due deletion request carried out once for the whole cluster.

The embedded ``ErasureJob`` (``relay.identity.data_rights``) erases an account's personal
data 30 days after its deletion request; in cluster mode the requests are PostgreSQL's, so
this job of the elected runner (``relay.cluster.job_runner``) does it there, running the
same statements (``relay.identity.erasure_plan``). Money records are kept as embedded:
the ledger, usage and payment rows are never touched, so the balance stays the ledger's
sum (its triggers would refuse a change to the ledger anyway).

Once per request, even with two runners at once (leadership is a schedule, not a fence):
each erasure locks its request row (``FOR UPDATE``) and re-checks that it is not erased
yet, then overwrites, marks the request and appends its audit row in one transaction.
After the commit every instance is told to reload the account and its keys (their names
and labels in memory).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from relay.cluster import pg_audit
from relay.cluster.pg_usage_reads import to_pg
from relay.identity.data_rights import pseudonym_for
from relay.identity.erasure_plan import ONLY_HERE_USERS, erasure_counts, erasure_steps

__all__ = ["PgErasure"]

log = logging.getLogger(__name__)

Publish = Callable[[str, str], Awaitable[object]]


def _rows_changed(status: str) -> int:
    # asyncpg answers the command tag: "UPDATE 3", "DELETE 0".
    return int(status.rsplit(" ", 1)[-1])


class PgErasure:
    def __init__(
        self,
        pool: Any,
        audit_key: bytes,
        publish: Publish,
        clock_ms: Callable[[], int],
        *,
        actor: str = "erasure",
    ) -> None:
        self._pool = pool
        self._audit_key = audit_key
        self._publish = publish
        self._clock_ms = clock_ms
        self._actor = actor

    async def run_once(self) -> list[str]:
        """Erase every account whose request is due; the ids erased by this run."""
        now = self._clock_ms()
        due = await self._pool.fetch(
            "SELECT account_id FROM deletion_requests"
            " WHERE erased_at_ms IS NULL AND erase_after_ms <= $1 ORDER BY account_id",
            now,
        )
        erased: list[str] = []
        for row in due:
            account_id = str(row["account_id"])
            if await self.erase(account_id, now):
                erased.append(account_id)
                await self._announce(account_id)
        return erased

    async def erase(self, account_id: str, now_ms: int) -> bool:
        """False when another runner erased it first."""
        pseudonym = pseudonym_for(account_id)
        async with self._pool.acquire() as conn, conn.transaction():
            pending = await conn.fetchval(
                "SELECT account_id FROM deletion_requests"
                " WHERE account_id = $1 AND erased_at_ms IS NULL FOR UPDATE",
                account_id,
            )
            if pending is None:
                return False
            only_here = [
                str(r[0]) for r in await conn.fetch(to_pg(ONLY_HERE_USERS), account_id, account_id)
            ]
            changed: dict[str, int] = {}
            for step in erasure_steps(account_id, pseudonym, now_ms, only_here=only_here):
                status = await conn.execute(to_pg(step.sql), *step.params)
                if step.counted_as is not None:
                    changed[step.counted_as] = _rows_changed(status)
            await conn.execute(
                "UPDATE deletion_requests SET erased_at_ms = $1, pseudonym = $2"
                " WHERE account_id = $3",
                now_ms,
                pseudonym,
                account_id,
            )
            await pg_audit.append(
                conn,
                self._audit_key,
                actor=self._actor,
                action="account.erase",
                target=account_id,
                detail={"pseudonym": pseudonym, **erasure_counts(changed, only_here)},
            )
        log.info("cluster: account %s erased (%s)", account_id, pseudonym)
        return True

    async def _announce(self, account_id: str) -> None:
        await self._publish("account", account_id)
        for row in await self._pool.fetch(
            "SELECT id FROM api_keys WHERE account_id = $1", account_id
        ):
            await self._publish("key", str(row["id"]))
