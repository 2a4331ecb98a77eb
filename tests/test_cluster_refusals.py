"""Back-pressure refusals and the daily rollup of a cluster instance, in process on the real
PostgreSQL and Redis.

A fenced instance refuses with 503 ``storage_unavailable``; the refusals are counted in
memory and written as ONE usage row per key to PostgreSQL with the settler's next batch
(none to the instance's scratch file), which a settlement backlog defers rather than grows.
The instance's job runner rolls its usage rows, the refusal row included, into
``usage_daily`` as the embedded writer would, and the admin summary counts them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from conftest import serve_relay
from test_cluster_routes import CALLS, Site, _cluster_config, _factory

import relay.cluster_jobs
from relay.cluster.admission import MAX_PENDING_SETTLEMENTS
from relay.cluster.runtime import refusal_sink
from relay.usage.log import UsageRecord
from relay.usage.refusals import RefusalCounter

asyncpg = pytest.importorskip("asyncpg")
pytest.importorskip("redis")

CHAT = CALLS[0]  # a non-stream completion of the example's mock model


@pytest.fixture
async def site(
    tmp_path: Path,
    pg_database: str,
    redis_server: Any,
    admin_token: str,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Site]:
    monkeypatch.setattr(relay.cluster_jobs, "ROLLUP_INTERVAL_S", 0.2)  # the charts' lag, for a test
    switch = {"armed": False}
    config = _cluster_config(tmp_path, pg_database, redis_server.port)
    async with serve_relay(config, client_factory=_factory(switch)) as served:
        created = await served.client.post("/admin/accounts", json={"name": "refusals"})
        account_id = created.json()["id"]
        credit = {"amount_usd": "5", "reference": "seed"}
        await served.client.post(f"/admin/accounts/{account_id}/credits", json=credit)
        key = await served.client.post(f"/admin/accounts/{account_id}/keys", json={"name": "k"})
        assert key.status_code == 201, key.text
        conn = await asyncpg.connect(pg_database)
        try:
            yield Site(served, conn, switch, account_id, key.json()["id"], key.json()["secret"])
        finally:
            await conn.close()


async def _refused_while_fenced(site: Site, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    runtime = site.relay.state.cluster

    async def stay_fenced() -> None:
        raise ConnectionError("the test keeps this instance fenced")

    monkeypatch.setattr(runtime, "rejoin", stay_fenced)
    runtime.lease_lost = True  # as the heartbeat sets it when the lease ran out
    try:
        for _ in range(count):
            answer = await site.send(CHAT)
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "storage_unavailable"
    finally:
        runtime.lease_lost = False  # the lease itself never expired: admit again
        monkeypatch.undo()


async def _rolled_up(site: Site, timeout_s: float = 10.0) -> list[tuple[int, int, int]]:
    """The account's (requests, errors, cost) in usage_daily once it counts every row."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = await site.conn.fetchval(
            "SELECT count(*) FROM usage WHERE account_id = $1", site.account_id
        )
        daily = await site.conn.fetch(
            "SELECT requests, errors, cost_micros FROM usage_daily WHERE account_id = $1",
            site.account_id,
        )
        if sum(row["requests"] for row in daily) == rows:
            return [tuple(row) for row in daily]
        assert time.monotonic() < deadline, "the rollup did not count the rows"
        await asyncio.sleep(0.05)


async def test_refusals_become_one_row_per_key_in_postgresql_and_roll_up(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = site.relay.state
    await _refused_while_fenced(site, monkeypatch, 3)
    assert state.refusals.refused == 3
    assert state.refusals.flush() == 1
    await state.admitter.committed()
    refused = await site.conn.fetch(
        "SELECT account_id, key_id, endpoint, status, error_code, units, cost_micros"
        " FROM usage WHERE request_id LIKE 'refused_%'"
    )
    assert [tuple(row) for row in refused] == [
        (site.account_id, site.key_id, CHAT.endpoint, 503, "storage_unavailable", 3, 0)
    ]
    await state.db.flush()
    assert await state.db.fetchall("SELECT id FROM usage") == []  # nothing in the scratch file

    served = await site.send(CHAT)
    assert served.status_code == 200, served.text
    cost = int(
        await site.conn.fetchval(
            "SELECT cost_micros FROM usage WHERE request_id = $1",
            served.headers["x-relay-request-id"],
        )
    )
    # As embedded: the refusal row is one request and one error of its day and model.
    assert await _rolled_up(site) == [(2, 1, cost)]
    summary = await site.relay.client.get(
        "/admin/usage/summary", params={"by": "account", "account": site.account_id}
    )
    assert summary.status_code == 200, summary.text
    (group,) = summary.json()["data"]
    assert (group["requests"], group["errors"], group["cost_micros"]) == (2, 1, cost)


class _BackloggedSettler:
    def __init__(self) -> None:
        self.pending = MAX_PENDING_SETTLEMENTS
        self.rows: list[UsageRecord] = []

    def record(self, row: UsageRecord) -> None:
        self.rows.append(row)


def test_refusal_rows_wait_while_settlements_are_backlogged() -> None:
    settler = _BackloggedSettler()
    counter = RefusalCounter(refusal_sink(cast(Any, settler)))
    for _ in range(2):
        counter.count(
            account_id="acct",
            key_id="key",
            endpoint="chat",
            model="m",
            status=503,
            code="storage_unavailable",
        )
    assert counter.flush() == 0 and settler.rows == []  # the count is kept, nothing queued
    settler.pending = 0
    assert counter.flush() == 1
    assert [(row.key_id, row.units) for row in settler.rows] == [("key", 2)]
