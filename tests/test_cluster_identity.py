"""Accounts, keys and their audit rows written through to PostgreSQL
(relay.cluster.pg_identity, relay.cluster.pg_audit), in process on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.cluster import pg_audit
from relay.cluster.pg_identity import ClusterAccountStore
from relay.cluster.pg_pool import create_pool
from relay.cluster.pg_schema import migrate
from relay.identity.accounts import Account, ApiKey
from relay.identity.audit import AUDIT_COLUMNS, verify_chain
from relay.money.wallet import Wallet
from relay.storage.db import Database

asyncpg = pytest.importorskip("asyncpg")

KEY = b"k" * 32


@pytest.fixture
async def store(tmp_path: Path, pg_database: str) -> AsyncIterator[ClusterAccountStore]:
    pool = await create_pool(pg_database, min_size=1, max_size=4)
    db = await Database.open(tmp_path / "scratch.db", flush_interval_s=0.001)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        announced: list[tuple[str, str]] = []
        holder: dict[str, ClusterAccountStore] = {}

        async def publish(kind: str, target: str) -> None:
            # This instance's own listener winning the race: it applies the announcement
            # before the write that published it has returned.
            announced.append((kind, target))
            if kind == "account":
                await holder["store"].reload_account(target)
            else:
                await holder["store"].reload_key(target)

        wallet = Wallet(lambda entry: None)
        holder["store"] = ClusterAccountStore(pool, publish, db, wallet, KEY)
        yield holder["store"]
    finally:
        await db.close()
        await pool.close()


async def _chain(store: ClusterAccountStore) -> list[tuple[Any, ...]]:
    rows = await store._pool.fetch(f"SELECT {AUDIT_COLUMNS} FROM audit ORDER BY id")
    return [tuple(row) for row in rows]


async def test_a_creation_applied_by_its_own_announcement_first_still_answers(
    store: ClusterAccountStore,
) -> None:
    account = await store.create_account(Account(id="", name="early"), actor="t")
    key, secret = await store.create_key(
        ApiKey(id="", account_id=account.id, label="k", last4=""), actor="t"
    )
    assert store.accounts[account.id].name == "early" and key.id in store.keys and secret
    rows = await _chain(store)
    assert [row[3] for row in rows] == ["account.create", "key.create"]
    assert verify_chain(rows, KEY).ok


async def test_a_write_that_rolls_back_leaves_no_audit_row(store: ClusterAccountStore) -> None:
    await store.create_account(Account(id="", name="first"), actor="t")
    async with store._pool.acquire() as conn:
        with pytest.raises(asyncpg.UniqueViolationError):
            async with conn.transaction():
                await pg_audit.append(
                    conn, KEY, actor="t", action="x", target=None, detail={"n": 1}
                )
                await conn.execute(
                    "INSERT INTO audit (id, ts_ms, actor, action) VALUES (1, 0, 'a', 'b')"
                )
    await store.record_action(actor="t", action="config.reload", target=None, detail={})
    rows = await _chain(store)
    assert [row[0] for row in rows] == [1, 2]
    assert [row[3] for row in rows] == ["account.create", "config.reload"]
    assert verify_chain(rows, KEY).ok
    listed = await pg_audit.list_rows(
        store._pool, limit=10, before_id=2**62, filters={"action": "config.reload"}
    )
    assert [row["id"] for row in listed] == [2]
    report = await pg_audit.verify(store._pool, KEY, page_size=1)  # a link across pages
    assert (report["ok"], report["rows"], report["last_id"]) == (True, 2, 2)
