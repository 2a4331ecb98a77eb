"""The alert outbox on PostgreSQL (relay.alerts.pg_outbox): instances raising the same alert
queue it once per re-arm interval, each row is delivered by one instance, and a row whose
deliverer died is delivered by another once its claim lease ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from support_alert_prune import (
    START_MS,
    check_horizon_follows_the_longest_rearm,
    check_pruning,
    prune_config,
)
from support_hooks import Hook

from relay.alerts.outbox import AlertOutbox
from relay.alerts.pg_outbox import CLAIM_LEASE_MS, PgOutbox
from relay.cluster.pg_pool import create_pool
from relay.cluster.pg_retention import PgRetentionJob
from relay.cluster.pg_schema import migrate
from relay.config import Config, parse_config
from relay.usage.retention import RetentionPolicy, RetentionReport

pytest.importorskip("asyncpg")


@pytest.fixture
async def pool(pg_database: str) -> AsyncIterator[Any]:
    created = await create_pool(pg_database, min_size=1, max_size=8)
    async with created.acquire() as conn:
        await migrate(conn)
    try:
        yield created
    finally:
        await created.close()


def _config(url: str, rearm_s: int = 3600) -> Config:
    return parse_config(
        f'[[alerts]]\nsink = "webhook"\nurl = "{url}"\nevents = ["provider_cooling"]\n'
        f"rearm_s = {rearm_s}\n"
    )


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000_000_000

    def __call__(self) -> int:
        return self.ms


async def _rows(pool: Any) -> list[Any]:
    return list(
        await pool.fetch(
            "SELECT subject, attempts, delivered_at_ms, last_error FROM alert_outbox ORDER BY id"
        )
    )


async def test_instances_raising_one_alert_together_queue_and_send_it_once(
    pool: Any, hook: Hook
) -> None:
    config = _config(hook.url)
    clock = Clock()
    stores = [PgOutbox(pool) for _ in range(3)]
    outboxes = [AlertOutbox(store, lambda: config, clock_ms=clock) for store in stores]
    try:
        # Every instance sees the upstream cool down at the same moment.
        for outbox in outboxes:
            assert outbox.raise_alert("provider_cooling", "openai", "every key is cooling") == 1
        for outbox in outboxes:
            await outbox.deliver_due()
        await asyncio.gather(*(outbox.deliver_due() for outbox in outboxes))
        assert [body["subject"] for body in hook.bodies()] == ["openai"]
        [row] = await _rows(pool)
        assert row["attempts"] == 1 and row["delivered_at_ms"] == clock.ms
        # Within the re-arm interval an instance that never saw it (started later) is
        # refused by the shared rows, not only by its own memory.
        late = AlertOutbox(PgOutbox(pool), lambda: config, clock_ms=clock)
        clock.ms += 60_000
        late.raise_alert("provider_cooling", "openai", "still cooling")
        await late.deliver_due()
        assert len(await _rows(pool)) == 1 and len(hook.received) == 1
        # A restarted instance resumes the re-arm clock from the shared rows.
        await late.start()
        assert late.raise_alert("provider_cooling", "openai", "again") == 0
        await late.aclose()
        # Once re-armed, the next raise is queued and sent again.
        clock.ms += 3_600_000
        assert outboxes[1].raise_alert("provider_cooling", "openai", "cooling again") == 1
        await stores[1].flush()
        assert await outboxes[2].deliver_due() == 1  # queued by one instance, sent by another
        assert [body["message"] for body in hook.bodies()] == [
            "every key is cooling",
            "cooling again",
        ]
    finally:
        for outbox in outboxes:
            await outbox.aclose()


async def test_a_row_claimed_by_a_dead_instance_is_delivered_after_its_lease(
    pool: Any, hook: Hook
) -> None:
    config = _config(hook.url)
    clock = Clock()
    alive_store = PgOutbox(pool)
    alive = AlertOutbox(alive_store, lambda: config, clock_ms=clock)
    dying = PgOutbox(pool)
    try:
        alive.raise_alert("provider_cooling", "anthropic", "every key is cooling")
        await alive_store.flush()
        claimed = await dying.claim_next(clock.ms)  # claimed, then the instance dies
        assert claimed is not None
        assert await alive.deliver_due() == 0 and hook.received == []  # still leased
        clock.ms += CLAIM_LEASE_MS - 1
        assert await alive.deliver_due() == 0
        clock.ms += 1
        assert await alive.deliver_due() == 1
        [row] = await _rows(pool)
        assert row["attempts"] == 1 and row["delivered_at_ms"] == clock.ms
        assert len(hook.received) == 1
    finally:
        await alive.aclose()


async def test_failures_back_off_and_are_recorded_in_postgresql(pool: Any, hook: Hook) -> None:
    config = _config(hook.url, rearm_s=0)
    clock = Clock()
    outbox = AlertOutbox(PgOutbox(pool), lambda: config, clock_ms=clock)
    try:
        hook.statuses = [500]
        outbox.raise_alert("provider_cooling", "deepseek", "every key is cooling")
        assert await outbox.deliver_due() == 0
        assert await outbox.deliver_due() == 0  # backing off
        [row] = await _rows(pool)
        assert row["attempts"] == 1 and row["delivered_at_ms"] is None
        assert "500" in row["last_error"]
        clock.ms += 5_000
        assert await outbox.deliver_due() == 1
        assert len(hook.received) == 2
    finally:
        await outbox.aclose()


async def test_postgresql_down_drops_the_alert_without_raising(hook: Hook) -> None:
    class Gone:
        def acquire(self) -> Any:
            raise OSError("connection refused")

    config = _config(hook.url)
    store = PgOutbox(Gone())
    outbox = AlertOutbox(store, lambda: config)
    try:
        assert outbox.raise_alert("provider_cooling", "openai", "cooling") == 1
        await store.flush()  # the insert failed and was logged; nothing raised here
    finally:
        await outbox.aclose()


async def test_retention_prunes_sent_alerts_past_the_rearm_horizon_in_batches(
    pool: Any, hook: Hook
) -> None:
    config = prune_config(hook.url)
    clock = [START_MS]
    store = PgOutbox(pool)
    outbox = AlertOutbox(store, lambda: config, clock_ms=lambda: clock[0])

    async def subjects() -> list[tuple[str, bool]]:
        rows = await pool.fetch("SELECT subject, delivered_at_ms FROM alert_outbox ORDER BY id")
        return [(row["subject"], row["delivered_at_ms"] is not None) for row in rows]

    async def run_job(prune: Callable[[int], Awaitable[int]]) -> RetentionReport | None:
        job = PgRetentionJob(pool, RetentionPolicy(), clock_ms=lambda: clock[0], prune_outbox=prune)
        return await job.run_once()

    try:
        await check_pruning(outbox, store, clock, subjects, run_job)
        await check_horizon_follows_the_longest_rearm(store, hook.url)
    finally:
        await outbox.aclose()
