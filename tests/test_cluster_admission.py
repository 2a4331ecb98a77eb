"""Cluster admission (relay.cluster.admission) on the real engines, in process.

Every way out after admission must end the hold and the slot exactly once: a refused hold
gives the slot and its tokens back, a cancelled admission releases what it placed when the
call completes anyway, a ticket settles once, a block that raises releases, a lost lease
refuses with 503 having taken nothing. The settler writes usage rows in the transaction of
the batch's settlements, and ``committed`` returns only once they are durable.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from relay.admission.exchange import Exchange
from relay.cluster.admission import ClusterTicket
from relay.cluster.redis_limits import Concurrency
from relay.cluster.runtime import ClusterRuntime
from relay.config import ClusterConfig, Config, StorageConfig
from relay.errors import QuotaError, RateLimited, StorageUnavailable
from relay.identity.accounts import Account, ApiKey
from relay.identity.auth import Principal
from relay.money.budget import BudgetCalendar
from relay.money.estimate import CostQuote
from relay.usage.log import UsageRecord

asyncpg = pytest.importorskip("asyncpg")
pytest.importorskip("redis")


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


async def _principal(
    cluster: ClusterRuntime, balance_micros: int, *, rpm: int = 0, concurrency: int = 100
) -> Principal:
    account = Account(id=f"acct_{secrets.token_hex(4)}", name=secrets.token_hex(4))
    key = ApiKey(
        id=secrets.token_hex(6),
        account_id=account.id,
        label="t",
        last4="abcd",
        rpm=rpm,
        concurrency=concurrency,
    )
    await cluster.store.create_account(account.id)
    await cluster.store.create_key(key.id, account.id)
    if balance_micros:
        await cluster.store.credit(account.id, balance_micros, reference="seed")
    return Principal("key", key, account)


def _exchange(principal: Principal) -> Exchange:
    return Exchange(f"req_{secrets.token_hex(8)}", "chat", principal)


QUOTE = CostQuote(estimate_micros=100, worst_case_micros=1_000, prompt_tokens=10)


async def _in_flight(cluster: ClusterRuntime, principal: Principal) -> int:
    assert principal.key is not None
    return await cluster.limiter.in_flight(Concurrency(f"key:{principal.key.id}", 0))


async def _eventually(check: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_a_refused_hold_consumes_nothing(runtime: ClusterRuntime) -> None:
    principal = await _principal(runtime, 500, rpm=1)  # less than one worst case
    with pytest.raises(QuotaError):
        await runtime.admitter.admit(_exchange(principal), QUOTE)

    async def slot_back() -> bool:
        return await _in_flight(runtime, principal) == 0

    await _eventually(slot_back)
    assert principal.account is not None
    await runtime.store.credit(principal.account.id, 10_000, reference="more")
    # The RPM token taken by the refused request was given back: rpm=1 still admits one.
    ticket = await runtime.admitter.admit(_exchange(principal), QUOTE)
    with pytest.raises(RateLimited):
        await runtime.admitter.admit(_exchange(principal), QUOTE)
    ticket.release()


async def test_a_ticket_settles_once_and_records_usage_in_the_same_commit(
    runtime: ClusterRuntime, pg_database: str
) -> None:
    principal = await _principal(runtime, 10_000)
    assert principal.account is not None
    exchange = _exchange(principal)
    ticket = await runtime.admitter.admit(exchange, QUOTE)
    assert isinstance(ticket, ClusterTicket) and await _in_flight(runtime, principal) == 1
    with ticket:
        charged = ticket.settle(5_000, 12, request_id=exchange.request_id, estimated=False)
        assert charged == 1_000 and ticket.overrun  # capped at the worst case
        runtime.settler.record(UsageRecord(exchange.request_id, 1, "chat", 200, cost_micros=1_000))
        assert ticket.settle(7, 1, request_id="other", estimated=False) == 1_000
    ticket.release()  # after a settlement: nothing
    await runtime.admitter.committed()
    conn = await asyncpg.connect(pg_database)
    try:
        balance = await conn.fetchval(
            "SELECT balance_micros FROM accounts WHERE id = $1", principal.account.id
        )
        usage = await conn.fetchval(
            "SELECT cost_micros FROM usage WHERE request_id = $1", exchange.request_id
        )
        holds = await conn.fetchval("SELECT count(*) FROM holds")
    finally:
        await conn.close()
    assert (balance, usage, holds) == (9_000, 1_000, 0)

    async def slot_back() -> bool:
        return await _in_flight(runtime, principal) == 0

    await _eventually(slot_back)


async def test_a_block_that_raises_releases_the_hold_and_the_slot(
    runtime: ClusterRuntime,
) -> None:
    principal = await _principal(runtime, 10_000)
    assert principal.account is not None
    with pytest.raises(RuntimeError):
        with await runtime.admitter.admit(_exchange(principal), QUOTE):
            raise RuntimeError("the upstream call failed")
    await runtime.admitter.committed()
    view = await runtime.store.snapshot(principal.account.id)
    assert (view.balance_micros, view.held_micros) == (10_000, 0)

    async def slot_back() -> bool:
        return await _in_flight(runtime, principal) == 0

    await _eventually(slot_back)


async def test_a_cancelled_admission_gives_back_what_it_placed(runtime: ClusterRuntime) -> None:
    principal = await _principal(runtime, 100_000)
    assert principal.account is not None
    tasks = [
        asyncio.create_task(runtime.admitter.admit(_exchange(principal), QUOTE)) for _ in range(20)
    ]
    await asyncio.sleep(0.005)  # some mid-take, some mid-hold, some admitted
    for task in tasks:
        task.cancel()
    for task in tasks:
        try:
            (await task).release()  # admitted before the cancel landed: ends normally
        except asyncio.CancelledError:
            pass
    account_id = principal.account.id

    async def nothing_held() -> bool:
        # A hold still being placed when its admission was cancelled lands afterwards and
        # is then given back: wait for the hold rows too, not only for the sums.
        await runtime.admitter.committed()
        held = (await runtime.store.snapshot(account_id)).held_micros
        return (
            held == 0
            and await runtime.store.open_hold_count(account_id) == 0
            and await _in_flight(runtime, principal) == 0
        )

    await _eventually(nothing_held)
    assert (await runtime.store.snapshot(account_id)).balance_micros == 100_000


async def test_a_lost_lease_refuses_with_503_and_takes_nothing(runtime: ClusterRuntime) -> None:
    principal = await _principal(runtime, 10_000)
    runtime.lease_lost = True
    with pytest.raises(StorageUnavailable):
        await runtime.admitter.admit(_exchange(principal), QUOTE)
    assert await _in_flight(runtime, principal) == 0
    runtime.lease_lost = False
    # Fenced in the database too: an expired lease places no hold even if the flag lagged.
    await runtime.pool.execute(
        "UPDATE instances SET lease_expires_at = now() WHERE id = $1", runtime.instance_id
    )
    with pytest.raises(StorageUnavailable):
        await runtime.admitter.admit(_exchange(principal), QUOTE)

    async def slot_back() -> bool:
        return await _in_flight(runtime, principal) == 0

    await _eventually(slot_back)
    assert principal.account is not None
    assert await runtime.store.open_hold_count(principal.account.id) == 0


async def test_a_hold_placed_after_its_caller_was_cancelled_is_released(
    runtime: ClusterRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministically: the client leaves while PostgreSQL is still placing the hold."""
    principal = await _principal(runtime, 10_000)
    assert principal.account is not None
    real_hold = runtime.store.hold
    entered, proceed = asyncio.Event(), asyncio.Event()
    placed: list[Any] = []

    async def slow_hold(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        await proceed.wait()
        hold = await real_hold(*args, **kwargs)
        placed.append(hold)
        return hold

    monkeypatch.setattr(runtime.store, "hold", slow_hold)
    task = asyncio.create_task(runtime.admitter.admit(_exchange(principal), QUOTE))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    proceed.set()  # the hold lands after the caller is gone
    account_id = principal.account.id

    async def released() -> bool:
        await runtime.admitter.committed()
        if not placed or await runtime.store.open_hold_count(account_id):
            return False
        return await _in_flight(runtime, principal) == 0

    await _eventually(released)
    assert (await runtime.store.snapshot(account_id)).held_micros == 0


async def test_a_dead_settler_stops_admission(
    runtime: ClusterRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A settler that stopped (a bug it re-raises) could never bill what is admitted: 503."""
    principal = await _principal(runtime, 10_000)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("a programming error the database cannot cause")

    monkeypatch.setattr(runtime.store, "settle_many", broken)
    exchange = _exchange(principal)
    ticket = await runtime.admitter.admit(exchange, QUOTE)
    ticket.settle(50, 10, request_id=exchange.request_id, estimated=False)

    async def stopped() -> bool:
        return not runtime.healthy()

    await _eventually(stopped)
    with pytest.raises(StorageUnavailable):
        await runtime.admitter.admit(_exchange(principal), QUOTE)


async def test_a_start_up_longer_than_the_lease_serves_under_a_live_lease(
    pg_database: str, redis_server: Any
) -> None:
    """Three instances starting at once on a busy box outlived a 3 s lease between
    registration and the first heartbeat, and all were fenced before serving: ``start``
    now beats once, so a lease already expired is replaced before the first request."""
    cluster = await ClusterRuntime.open(_config(pg_database, redis_server), name="t")
    first_id = cluster.instance_id
    await cluster.pool.execute(
        "UPDATE instances SET lease_expires_at = now() WHERE id = $1", first_id
    )

    async def ignore(change: Any) -> None:
        return None

    await cluster.start(ignore)
    try:
        assert cluster.healthy() and not cluster.lease_lost and cluster.rejoins == 1
        assert cluster.instance_id != first_id
        alive = await cluster.pool.fetchval(
            "SELECT lease_expires_at > now() FROM instances WHERE id = $1", cluster.instance_id
        )
        assert alive is True
    finally:
        await cluster.close()


async def test_a_failed_invalidation_keeps_the_listener_and_is_retried_in_full(
    pg_database: str, redis_server: Any
) -> None:
    cluster = await ClusterRuntime.open(_config(pg_database, redis_server), name="t")
    seen: list[str] = []
    failures = [1]

    async def handler(change: Any) -> None:
        if change.kind == "key" and failures[0]:
            failures[0] -= 1
            raise OSError("PostgreSQL unreachable for a moment")
        seen.append(change.kind)

    await cluster.start(handler)
    try:
        assert seen == ["all"]  # the reload after subscribing
        await cluster.publish("key", "k1")

        async def retried_in_full() -> bool:
            return seen.count("all") >= 2  # from the heartbeat (every second here)

        await _eventually(retried_in_full)
        await cluster.publish("account", "a1")

        async def still_listening() -> bool:
            return "account" in seen

        await _eventually(still_listening)
    finally:
        await cluster.close()


async def test_a_lost_lease_rejoins_under_a_new_id_and_each_old_hold_ends_once(
    runtime: ClusterRuntime, pg_database: str
) -> None:
    """The instance paused past its lease with two requests in flight. One settles before
    the sweep (charged: its hold was still there), the sweep releases the other (recorded
    abandoned), whose late settlement then charges nothing and says so in its usage row.
    The instance registers a new lease under a new id and admits again."""
    await runtime._heartbeat.stop()  # beats run by hand: the order is the test's
    principal = await _principal(runtime, 100_000)
    assert principal.account is not None
    account_id, old_id = principal.account.id, runtime.instance_id
    early, late = _exchange(principal), _exchange(principal)
    early_ticket = await runtime.admit(early, QUOTE)
    late_ticket = await runtime.admit(late, QUOTE)
    await runtime.pool.execute(
        "UPDATE instances SET lease_expires_at = now() WHERE id = $1", old_id
    )
    # Settled after the lease ran out but before any sweep: the hold row decides, charged.
    early_ticket.settle(500, 10, request_id=early.request_id, estimated=False)
    runtime.settler.record(UsageRecord(early.request_id, 1, "chat", 200, cost_micros=500))
    await runtime.committed()

    await runtime.beat()  # renew fails (LeaseLost), rejoin, then the sweep
    assert runtime.rejoins == 1 and not runtime.lease_lost and runtime.healthy()
    new_id = runtime.instance_id
    assert new_id != old_id and runtime.origin == old_id  # the bus keeps its name
    conn = await asyncpg.connect(pg_database)
    try:
        abandoned = await conn.fetch(
            "SELECT instance_id, request_id FROM abandoned_holds WHERE account_id = $1",
            account_id,
        )
        assert [tuple(r) for r in abandoned] == [(old_id, late.request_id)]
        assert await conn.fetchval("SELECT count(*) FROM instances WHERE id = $1", old_id) == 0

        # The late settlement is fenced: its hold is gone, nothing is charged.
        late_ticket.settle(700, 10, request_id=late.request_id, estimated=False)
        runtime.settler.record(UsageRecord(late.request_id, 1, "chat", 200, cost_micros=700))
        await runtime.committed()
        charges = await conn.fetch(
            "SELECT request_id, amount_micros FROM ledger WHERE kind = 'charge'"
            " AND account_id = $1",
            account_id,
        )
        assert [tuple(r) for r in charges] == [(early.request_id, -500)]
        costs = dict(
            await conn.fetch(
                "SELECT request_id, cost_micros FROM usage WHERE request_id = ANY($1)",
                [early.request_id, late.request_id],
            )
        )
        assert costs == {early.request_id: 500, late.request_id: 0}

        # Admitting again, under the new lease only.
        again = _exchange(principal)
        ticket = await runtime.admit(again, QUOTE)
        holder = await conn.fetchval(
            "SELECT instance_id FROM holds WHERE request_id = $1", again.request_id
        )
        assert holder == new_id
        ticket.settle(100, 10, request_id=again.request_id, estimated=False)
        await runtime.committed()
        row = await conn.fetchrow(
            "SELECT balance_micros, worst_micros,"
            " (SELECT SUM(amount_micros) FROM ledger WHERE account_id = $1) AS total"
            " FROM accounts WHERE id = $1",
            account_id,
        )
        assert (row["balance_micros"], row["worst_micros"]) == (100_000 - 600, 0)
        assert row["total"] == row["balance_micros"]
        assert await conn.fetchval("SELECT count(*) FROM holds") == 0
    finally:
        await conn.close()

    async def slots_back() -> bool:
        return await _in_flight(runtime, principal) == 0

    await _eventually(slots_back)


async def test_a_rejoin_keeps_the_budget_calendar_of_the_first_lease(
    runtime: ClusterRuntime,
) -> None:
    """Budget periods start where the app's calendar says (a 06:00 day here): the store a
    rejoin builds must not fall back to UTC midnight."""
    await runtime._heartbeat.stop()
    calendar = BudgetCalendar(day_start_hour=6, week_start=2, month_start_day=15)
    now_ms = 1_764_900_000_000
    runtime.store.use_periods(lambda: calendar, lambda: now_ms)
    before = runtime.store.period_starts()
    old_id = runtime.instance_id
    await runtime.pool.execute(
        "UPDATE instances SET lease_expires_at = now() WHERE id = $1", old_id
    )
    await runtime.beat()
    assert runtime.rejoins == 1 and runtime.instance_id != old_id
    assert runtime.store.instance_id == runtime.instance_id
    assert runtime.store.period_starts() == before
    assert before[0] % 86_400_000 == 6 * 3_600_000


async def test_a_failed_rejoin_is_retried_next_beat_and_the_beat_goes_on(
    runtime: ClusterRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relay.cluster import runtime as runtime_module

    await runtime._heartbeat.stop()
    principal = await _principal(runtime, 10_000)
    ticket = await runtime.admit(_exchange(principal), QUOTE)  # a slot to keep renewing
    await runtime.pool.execute(
        "UPDATE instances SET lease_expires_at = now() WHERE id = $1", runtime.instance_id
    )
    real_register = runtime_module.InstanceLease.register
    renewed: list[int] = []
    real_renew = runtime.limiter.renew

    async def refused(*args: Any, **kwargs: Any) -> Any:
        raise OSError("PostgreSQL unreachable for a moment")

    async def counting_renew(slots: Any) -> None:
        renewed.append(len(slots))
        await real_renew(slots)

    monkeypatch.setattr(runtime_module.InstanceLease, "register", refused)
    monkeypatch.setattr(runtime.limiter, "renew", counting_renew)
    await runtime.beat()  # does not raise
    assert runtime.lease_lost and not runtime.healthy() and renewed == [1]
    with pytest.raises(StorageUnavailable):
        await runtime.admit(_exchange(principal), QUOTE)
    monkeypatch.setattr(runtime_module.InstanceLease, "register", real_register)
    await runtime.beat()
    assert runtime.healthy() and runtime.rejoins == 1
    ticket.release()  # swept already (the old lease expired): releasing changes nothing
    await runtime.committed()
    fresh = await runtime.admit(_exchange(principal), QUOTE)
    fresh.release()
    await runtime.committed()
    assert principal.account is not None
    assert await runtime.store.open_hold_count(principal.account.id) == 0
