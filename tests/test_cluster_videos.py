"""Video jobs across `relay serve` processes sharing PostgreSQL and Redis (cluster mode).

A job is created on one instance and read on the other; exactly one instance (the job
runner, elected by an advisory lock) polls it; killing that instance with SIGKILL passes
the runner to the survivor, which completes the job and charges it exactly once, with the
balance equal to the ledger's sum and nothing left held. The cluster helpers (processes,
config, accounts) are tests/test_cluster_serve.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import mock_upstream
from support_cluster_serve import Cluster, Instance, account, credit, key, money, wallet

from relay.cluster.job_runner import RUNNER_LOCK

asyncpg = pytest.importorskip("asyncpg")
pytest.importorskip("redis")

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

LEADING = "this instance now runs the cluster's jobs"
VIDEO_MODELS = """
[[providers]]
name = "mock"
kind = "mock"

[[models]]
name = "mock-video"
kind = "video"
routes = ["mock:mock-video"]
usd_per_video_second = "0.10"
"""


class VideoCluster(Cluster):
    def write_config(self) -> Path:
        config = super().write_config()
        config.write_text(config.read_text() + VIDEO_MODELS)
        return config


@contextlib.asynccontextmanager
async def video_cluster(
    tmp_path: Path, pg_database: str, redis_server: Any
) -> AsyncIterator[VideoCluster]:
    upstream = await mock_upstream.start(port=0, options=mock_upstream.MockOptions())
    redis_url = f"redis://127.0.0.1:{redis_server.port}/14"
    cluster = VideoCluster(tmp_path, pg_database, redis_url, f"http://127.0.0.1:{upstream.port}/v1")
    try:
        yield cluster
    finally:
        await asyncio.to_thread(cluster.stop_all)
        await upstream.close()


async def _leader(instances: list[Instance], timeout_s: float = 10.0) -> Instance:
    deadline = time.monotonic() + timeout_s
    while True:
        leading = [i for i in instances if LEADING in i.log.read_text()]
        if leading:
            assert len(leading) == 1, "two instances lead the cluster's jobs"
            return leading[0]
        assert time.monotonic() < deadline, "no instance took the job runner's lock"
        await asyncio.sleep(0.05)


async def _lock_holders(conn: Any) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND objid = ($1::bigint & 4294967295)::oid",
            RUNNER_LOCK,
        )
    )


async def test_a_job_created_on_one_instance_survives_its_runner_and_is_charged_once(
    tmp_path: Path, pg_database: str, redis_server: Any
) -> None:
    async with video_cluster(tmp_path, pg_database, redis_server) as cluster:
        a, b = await cluster.start(), await cluster.start()
        runner = await _leader([a, b])
        other = b if runner is a else a
        conn = await asyncpg.connect(pg_database)
        try:
            async with runner.client() as cr, other.client() as co:
                account_id = await account(co, "video")
                assert (await credit(co, account_id, "1", "seed")).status_code == 201
                _, secret = await key(co, account_id)
                stranger = await account(co, "stranger")
                _, stranger_secret = await key(co, stranger)
                auth = {"authorization": f"Bearer {secret}"}

                body = {"model": "mock-video", "prompt": "a cat surfing", "seconds": "4"}
                created = await co.post("/v1/videos", json=body, headers=auth)
                assert created.status_code == 200, created.text
                job = created.json()
                assert job["status"] == "queued"
                assert job["metadata"]["cost_estimate_micros"] == "400000"
                shown = await cr.get(f"/v1/videos/{job['id']}", headers=auth)
                assert shown.status_code == 200 and shown.json()["id"] == job["id"]
                hidden = await cr.get(
                    f"/v1/videos/{job['id']}",
                    headers={"authorization": f"Bearer {stranger_secret}"},
                )
                assert hidden.status_code == 404
                hold = await conn.fetchrow(
                    "SELECT instance_id, worst_case_micros FROM holds WHERE request_id = $1",
                    job["id"],
                )
                assert tuple(hold) == ("cluster:jobs", 400_000)
                assert (await wallet(cr, account_id))["held_micros"] == 400_000
                assert await _lock_holders(conn) == 1

                # The runner dies without warning before the job is done (it renders 3 s).
                assert await conn.fetchval("SELECT count(*) FROM ledger WHERE kind = 'charge'") == 0
                runner.process.send_signal(signal.SIGKILL)
                runner.process.wait()
                await _leader([other])
                deadline = time.monotonic() + 20
                while True:
                    view = (await co.get(f"/v1/videos/{job['id']}", headers=auth)).json()
                    if view["status"] == "completed":
                        break
                    assert view["status"] in ("queued", "in_progress"), view
                    assert time.monotonic() < deadline, view
                    await asyncio.sleep(0.1)
                assert view["metadata"]["cost_micros"] == "400000"
                content = await co.get(f"/v1/videos/{job['id']}/content", headers=auth)
                assert content.status_code == 200 and content.content

                charges = await conn.fetch(
                    "SELECT amount_micros FROM ledger WHERE kind = 'charge' AND reference = $1",
                    job["id"],
                )
                assert [row[0] for row in charges] == [-400_000]
                assert await money(conn, account_id) == (600_000, 600_000, 0)
                assert await conn.fetchval("SELECT count(*) FROM holds") == 0
                usage = await conn.fetch(
                    "SELECT status, cost_micros FROM usage WHERE request_id = $1", job["id"]
                )
                assert [tuple(row) for row in usage] == [(200, 400_000)]
                assert (await wallet(co, account_id))["balance_micros"] == 600_000
        finally:
            await conn.close()
