"""The cluster's job runner and video jobs on PostgreSQL, in process on the real engines.

``JobRunner`` (relay.cluster.job_runner): one leader at a time through a session advisory
lock, the lock passing on when the leader's connection dies or it stops; a leader whose
session was lost runs nothing more; a job's interval may be a setting read afresh (the
billing jobs', tests/test_cluster_payments.py runs them through two instances). ``PgVideoStore``
(relay.cluster.pg_videos): the request's hold moves to the cluster with the job's row,
survives the sweep of a dead instance's holds, and is settled exactly once even when two
runners end the same job at once; a failed job releases it; a job without a hold (copied
by ``relay migrate``) gets one. tests/test_cluster_videos.py runs the same through
``relay serve`` processes.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.admission.exchange import Exchange
from relay.admission.ticket import Ticket
from relay.cluster.admission import ClusterTicket
from relay.cluster.job_runner import RUNNER_LOCK, ClusterJob, JobRunner
from relay.cluster.pg_leases import reap_expired
from relay.cluster.pg_schema import migrate
from relay.cluster.pg_videos import PgVideoStore
from relay.cluster.runtime import ClusterRuntime
from relay.config import ClusterConfig, Config, StorageConfig
from relay.identity.accounts import Account, ApiKey
from relay.identity.auth import Principal
from relay.jobs.video import VideoJob
from relay.money.estimate import CostQuote
from relay.storage.schema_cluster_jobs import JOBS_OWNER

asyncpg = pytest.importorskip("asyncpg")
pytest.importorskip("redis")

QUOTE_MICROS = 400_000  # 4 s at $0.10 per second


# --- the runner ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _runner(dsn: str, ran: list[str], name: str, clock: Clock) -> JobRunner:
    async def step() -> None:
        ran.append(name)

    async def connect() -> Any:
        return await asyncpg.connect(dsn)

    job = ClusterJob("count", step, interval_s=10.0)
    return JobRunner(connect, [job], round_s=60, clock=clock)


async def _lock_holders(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND objid = ($1::bigint & 4294967295)::oid",
                RUNNER_LOCK,
            )
        )
    finally:
        await conn.close()


async def test_one_runner_leads_and_its_lock_passes_on_when_it_dies_or_stops(
    pg_database: str,
) -> None:
    ran: list[str] = []
    clock = Clock()
    a, b = _runner(pg_database, ran, "a", clock), _runner(pg_database, ran, "b", clock)
    try:
        await a.round()
        await b.round()
        assert (a.leader, b.leader, ran) == (True, False, ["a"])
        assert await _lock_holders(pg_database) == 1
        await a.round()  # not due yet: every 10 s
        clock.now += 10
        await a.round()
        await b.round()
        assert ran == ["a", "a"]

        # The leader's session dies (kill -9, a lost machine): PostgreSQL frees its lock.
        admin = await asyncpg.connect(pg_database)
        try:
            pid = a._conn.get_server_pid()
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            while await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
                await asyncio.sleep(0.01)
        finally:
            await admin.close()
        await b.round()
        assert b.leader and ran == ["a", "a", "b"]
        clock.now += 10  # its job is due again, but its session (and lock) is gone:
        await a.round()  # finds it lost, reconnects, does not lead, and runs nothing
        assert ran == ["a", "a", "b"]
        assert not a.leader and a.terms == 1
        clock.now += 10
        await a.round()
        await b.round()
        assert ran == ["a", "a", "b", "b"] and await _lock_holders(pg_database) == 1

        await b.stop()  # a graceful stop gives the lock up at once
        await a.round()
        assert a.leader and a.terms == 2 and ran[-1] == "a"
    finally:
        await a.stop()
        await b.stop()
    assert await _lock_holders(pg_database) == 0


async def test_a_jobs_interval_may_be_a_setting_read_each_time_it_is_scheduled(
    pg_database: str,
) -> None:
    # The billing jobs' interval is [alerts_settings] check_interval_s: a reload may change it.
    ran: list[str] = []
    setting = [1.0]
    clock = Clock()

    async def sweep() -> None:
        ran.append("sweep")

    async def connect() -> Any:
        return await asyncpg.connect(pg_database)

    job = ClusterJob("auto_topup", sweep, interval_s=lambda: setting[0])
    runner = JobRunner(connect, [job], round_s=60, clock=clock)
    try:
        await runner.round()  # elected: runs at once (first_after_s = 0)
        clock.now += 1
        await runner.round()
        assert ran == ["sweep", "sweep"]
        setting[0] = 5.0  # reloaded: from the next scheduling on
        clock.now += 1
        await runner.round()  # due (scheduled 1 s ago), next in 5 s
        clock.now += 4
        await runner.round()
        assert len(ran) == 3
        clock.now += 1
        await runner.round()
        assert len(ran) == 4 and job.interval() == 5.0
    finally:
        await runner.stop()


def test_every_advisory_lock_key_is_its_own() -> None:
    # The runner's session lock once shared the audit chain's key: every audit append then
    # waited for as long as an instance led. Each key is spelled "relay" + an offset.
    root = Path(__file__).resolve().parent.parent / "relay"
    keys: dict[int, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        for found in re.finditer(
            r"^(\w+) = 0x72656C6179(?: \+ (0x[0-9A-Fa-f]+|\d+))?", path.read_text(), re.M
        ):
            offset = int(found.group(2), 0) if found.group(2) else 0
            keys.setdefault(offset, []).append(f"{path.name}:{found.group(1)}")
    assert len(keys) >= 5 and 0xB1 in keys
    assert {k: v for k, v in keys.items() if len(v) > 1} == {}


async def test_a_failing_job_does_not_stop_the_others(pg_database: str) -> None:
    ran: list[str] = []

    async def broken() -> None:
        raise RuntimeError("storage trouble")

    async def fine() -> None:
        ran.append("fine")

    async def connect() -> Any:
        return await asyncpg.connect(pg_database)

    runner = JobRunner(connect, [ClusterJob("broken", broken, 1.0), ClusterJob("fine", fine, 1.0)])
    try:
        await runner.round()
    finally:
        await runner.stop()
    assert ran == ["fine"]


# --- video jobs on PostgreSQL ---------------------------------------------------------------


def _config(pg_database: str, redis_server: Any) -> Config:
    db = 1 + secrets.randbelow(15)
    return Config(
        storage=StorageConfig(url=pg_database),
        cluster=ClusterConfig(redis_url=f"redis://127.0.0.1:{redis_server.port}/{db}", lease_s=3),
    )


@pytest.fixture
async def runtime(pg_database: str, redis_server: Any) -> AsyncIterator[ClusterRuntime]:
    cluster = await ClusterRuntime.open(_config(pg_database, redis_server), name="t")

    async def ignore(change: Any) -> None:
        return None

    await cluster.start(ignore)
    try:
        yield cluster
    finally:
        await cluster.close()


async def _principal(cluster: ClusterRuntime, balance_micros: int) -> Principal:
    account = Account(id=f"acct_{secrets.token_hex(4)}", name=secrets.token_hex(4))
    key = ApiKey(id=secrets.token_hex(6), account_id=account.id, label="t", last4="abcd")
    await cluster.store.create_account(account.id)
    await cluster.store.create_key(key.id, account.id)
    await cluster.store.credit(account.id, balance_micros, reference="seed")
    return Principal("key", key, account)


def _job(principal: Principal) -> VideoJob:
    assert principal.account is not None and principal.key is not None
    return VideoJob(
        id="video_" + secrets.token_hex(6),
        account_id=principal.account.id,
        key_id=principal.key.id,
        model="sora",
        provider="vids",
        upstream_model="sora-2",
        upstream_id="vid_1",
        seconds="4",
        size=None,
        estimate_micros=QUOTE_MICROS,
        usd_per_second="0.10",
        price_multiplier="1",
        created_at_ms=time.time_ns() // 1_000_000,
    )


async def _money(pool: Any, account_id: str) -> tuple[int, int, int]:
    """(balance, Σ ledger rows, Σ worst case held) straight from the tables."""
    row = await pool.fetchrow(
        "SELECT balance_micros, worst_micros FROM accounts WHERE id = $1", account_id
    )
    total = await pool.fetchval(
        "SELECT COALESCE(SUM(amount_micros), 0) FROM ledger WHERE account_id = $1", account_id
    )
    return int(row["balance_micros"]), int(total), int(row["worst_micros"])


async def _handed_over(runtime: ClusterRuntime, principal: Principal) -> tuple[VideoJob, Any]:
    quote = CostQuote(estimate_micros=QUOTE_MICROS, worst_case_micros=QUOTE_MICROS)
    ticket = await runtime.admitter.admit(Exchange("req_v", "videos", principal), quote)
    assert isinstance(ticket, ClusterTicket)
    job = _job(principal)
    store = PgVideoStore(runtime.pool, lambda: runtime.store)
    with ticket:
        await store.hand_over(job, ticket)
    return job, store


async def test_a_job_keeps_the_clusters_hold_past_its_instance_and_is_charged_once(
    runtime: ClusterRuntime,
) -> None:
    principal = await _principal(runtime, 1_000_000)
    assert principal.account is not None
    account = principal.account.id
    job, store = await _handed_over(runtime, principal)
    await runtime.admitter.committed()  # the ticket's exit settled nothing
    pool = runtime.pool
    hold = await pool.fetchrow("SELECT * FROM holds WHERE request_id = $1", job.id)
    assert hold["instance_id"] == JOBS_OWNER and hold["worst_case_micros"] == QUOTE_MICROS
    assert await pool.fetchval("SELECT count(*) FROM holds") == 1

    # The instance that created it dies: the sweep releases its holds, not the job's.
    await pool.execute(
        "UPDATE instances SET lease_expires_at = now() WHERE id = $1", runtime.instance_id
    )
    reaped = await reap_expired(pool)
    assert reaped.instances_reaped == 1 and reaped.holds_released == 0
    assert await _money(pool, account) == (1_000_000, 1_000_000, QUOTE_MICROS)

    # Two runners (one of them a moment too late) end the same job at once: one charge.
    other = PgVideoStore(pool, lambda: runtime.store.bound_to("another-instance"))
    seen = [await store.running(), await other.running()]
    assert [[j.id for j in jobs] for jobs in seen] == [[job.id], [job.id]]
    ends = []
    for runner_store, jobs in zip((store, other), seen, strict=True):
        finished = jobs[0]
        finished.status, finished.progress = "completed", 100
        finished.updated_at_ms = finished.completed_at_ms = finished.created_at_ms + 5
        ends.append(runner_store.complete(finished, 300_000, 4))
    await asyncio.gather(*ends)
    charges = await pool.fetch(
        "SELECT amount_micros, reference, request_id FROM ledger WHERE kind = 'charge'"
    )
    assert [tuple(row) for row in charges] == [(-300_000, job.id, job.id)]
    assert await _money(pool, account) == (700_000, 700_000, 0)
    usage = await pool.fetch("SELECT status, cost_micros, units FROM usage")
    assert [tuple(row) for row in usage] == [(200, 300_000, 4)]
    shown = await store.find(job.id)
    assert shown is not None and (shown.status, shown.cost_micros) == ("completed", 300_000)
    assert await store.running() == [] and store.count == 0


async def test_a_failed_job_releases_its_hold_and_charges_nothing(
    runtime: ClusterRuntime,
) -> None:
    principal = await _principal(runtime, 1_000_000)
    assert principal.account is not None
    job, store = await _handed_over(runtime, principal)
    [running] = await store.running()
    running.status, running.error_code, running.cost_micros = "failed", "video_failed", 0
    running.updated_at_ms = running.completed_at_ms = running.created_at_ms + 1
    await store.fail(running)
    await store.fail(running)  # a second end finds it ended: nothing more
    pool = runtime.pool
    assert await _money(pool, principal.account.id) == (1_000_000, 1_000_000, 0)
    assert await pool.fetchval("SELECT count(*) FROM holds") == 0
    usage = await pool.fetch("SELECT status, cost_micros, error_code FROM usage")
    assert [tuple(row) for row in usage] == [(502, 0, "video_failed")]


async def test_a_stored_job_that_fails_to_move_its_hold_keeps_the_request_releasing_it(
    runtime: ClusterRuntime,
) -> None:
    # The job row cannot be written (a duplicate id): the hold's move rolls back with it and
    # the request's ticket releases the hold on its way out.
    principal = await _principal(runtime, 1_000_000)
    assert principal.account is not None
    job, store = await _handed_over(runtime, principal)
    quote = CostQuote(estimate_micros=QUOTE_MICROS, worst_case_micros=QUOTE_MICROS)
    ticket = await runtime.admitter.admit(Exchange("req_w", "videos", principal), quote)
    with pytest.raises(asyncpg.UniqueViolationError):
        with ticket:
            await store.hand_over(job, ticket)
    await runtime.admitter.committed()
    pool = runtime.pool
    assert await pool.fetchval("SELECT count(*) FROM holds") == 1  # the first job's only
    assert await _money(pool, principal.account.id) == (1_000_000, 1_000_000, QUOTE_MICROS)


async def test_a_migrated_job_without_a_hold_gets_one_from_the_runner(
    runtime: ClusterRuntime,
) -> None:
    principal = await _principal(runtime, 1_000_000)
    assert principal.account is not None
    store = PgVideoStore(runtime.pool, lambda: runtime.store)
    job = _job(principal)
    await store.hand_over(job, Ticket())  # a row and no hold, as `relay migrate` leaves it
    pool = runtime.pool
    assert await pool.fetchval("SELECT count(*) FROM holds") == 0
    [running] = await store.running()
    hold = await pool.fetchrow("SELECT * FROM holds WHERE request_id = $1", job.id)
    assert hold["instance_id"] == JOBS_OWNER and hold["worst_case_micros"] == QUOTE_MICROS
    await store.running()  # seen again: not held twice
    assert await pool.fetchval("SELECT count(*) FROM holds") == 1
    running.status, running.progress = "completed", 100
    running.updated_at_ms = running.completed_at_ms = running.created_at_ms + 1
    await store.complete(running, 400_000, 4)
    assert await _money(pool, principal.account.id) == (600_000, 600_000, 0)


async def test_the_jobs_migration_applies_once(pg_database: str) -> None:
    conn = await asyncpg.connect(pg_database)
    try:
        assert 12 in await migrate(conn)  # cluster: holds owned by video jobs, archive files
        assert await migrate(conn) == []
    finally:
        await conn.close()
