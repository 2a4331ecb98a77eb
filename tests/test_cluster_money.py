"""relay.cluster's money store against a real, throwaway PostgreSQL (tests/support_cluster.py).

Each "instance" is what a relay process would own: its own connection pool, its own lease
and its own PgMoneyStore; several of them run concurrently on one event loop, sharing
nothing but the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from relay.cluster.pg_leases import InstanceLease, LeaseLost, reap_expired
from relay.cluster.pg_money import ClusterHold, PgMoneyStore
from relay.cluster.pg_pool import create_pool
from relay.cluster.pg_schema import MIGRATIONS, migrate
from relay.cluster.settler import Settler
from relay.errors import QuotaError
from relay.money.budget import BudgetCalendar, BudgetPeriod
from relay.money.quota_messages import charge_note
from relay.money.records import DuplicateReference
from relay.money.wallet import Wallet

asyncpg = pytest.importorskip("asyncpg")


@dataclass
class Instance:
    pool: Any
    lease: InstanceLease
    money: PgMoneyStore


class Cluster:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.instances: list[Instance] = []

    async def start(self, *, lease_s: float = 30.0, pool_size: int = 4) -> Instance:
        pool = await create_pool(self.dsn, min_size=1, max_size=pool_size)
        async with pool.acquire() as conn:
            await migrate(conn)
        lease = await InstanceLease.register(pool, lease_s, name=f"i{len(self.instances)}")
        instance = Instance(pool, lease, PgMoneyStore(pool, lease.instance_id))
        self.instances.append(instance)
        return instance

    async def close(self) -> None:
        for instance in self.instances:
            await instance.pool.close()


@pytest.fixture
async def cluster(pg_database: str) -> AsyncIterator[Cluster]:
    made = Cluster(pg_database)
    try:
        yield made
    finally:
        await made.close()


async def test_migrations_apply_once_even_when_instances_start_together(
    cluster: Cluster,
) -> None:
    first, second, third = await asyncio.gather(*(cluster.start() for _ in range(3)))
    rows = await first.pool.fetch("SELECT number, name FROM schema_migrations ORDER BY number")
    assert [(r["number"], r["name"]) for r in rows] == [(m.number, m.name) for m in MIGRATIONS]
    async with second.pool.acquire() as conn:
        assert await migrate(conn) == []


async def test_the_ledger_is_append_only_and_balances_move_only_through_it(
    cluster: Cluster,
) -> None:
    node = await cluster.start()
    await node.money.create_account("acct")
    assert await node.money.credit("acct", 5_000, reference="INV-1")
    for sql in (
        "UPDATE ledger SET amount_micros = 1",
        "DELETE FROM ledger",
        "TRUNCATE ledger",
    ):
        with pytest.raises(asyncpg.exceptions.RaiseError, match="append-only"):
            await node.pool.execute(sql)
    with pytest.raises(asyncpg.exceptions.RaiseError, match="sum of ledger rows"):
        await node.pool.execute("UPDATE accounts SET balance_micros = 1000000000")
    with pytest.raises(asyncpg.exceptions.RaiseError, match="sum of ledger rows"):
        await node.pool.execute(
            "INSERT INTO accounts (id, mode, balance_micros) VALUES ('rich', 'prepaid', 10)"
        )
    view = await node.money.snapshot("acct")
    assert view.balance_micros == 5_000 == await node.money.ledger_sum("acct")


async def test_credits_are_idempotent_per_account_and_reference(cluster: Cluster) -> None:
    a, b = await cluster.start(), await cluster.start()
    await a.money.create_account("acct")
    await a.money.create_account("other")
    results = await asyncio.gather(
        *(inst.money.credit("acct", 2_000, reference="INV-7") for inst in (a, b, a, b))
    )
    assert sorted(results) == [False, False, False, True]
    with pytest.raises(DuplicateReference):
        await b.money.credit("acct", 3_000, reference="INV-7")
    # The same reference on another account is another top-up.
    assert await b.money.credit("other", 3_000, reference="INV-7")
    assert (await a.money.snapshot("acct")).balance_micros == 2_000
    assert await a.money.ledger_sum("acct") == 2_000
    assert await a.money.ledger_sum("other") == 3_000


async def test_a_hold_fits_the_headroom_or_is_refused_and_the_key_cap_binds_too(
    cluster: Cluster,
) -> None:
    node = await cluster.start()
    money = node.money
    await money.create_account("acct")
    await money.create_key("k1", "acct", spend_cap_micros=1_200)
    await money.credit("acct", 2_000, reference="top-up")
    first = await money.hold("acct", "k1", estimate_micros=100, worst_case_micros=1_000)
    assert first.strict  # close to the edge: the worst case is held, not the estimate
    with pytest.raises(QuotaError, match="key spend cap"):
        await money.hold("acct", "k1", estimate_micros=100, worst_case_micros=500)
    # The key's refusal undid the account's part of the hold.
    view = await money.snapshot("acct")
    assert (view.held_micros, view.available_micros) == (1_000, 1_000)
    second = await money.hold("acct", None, estimate_micros=100, worst_case_micros=1_000)
    with pytest.raises(QuotaError, match="insufficient balance"):
        await money.hold("acct", None, estimate_micros=1, worst_case_micros=1)
    settled = await money.settle(first, 700, reference="req-1")
    assert (settled.outcome, settled.charged_micros) == ("settled", 700)
    await money.release(second)
    view = await money.snapshot("acct")
    assert (view.balance_micros, view.held_micros, view.available_micros) == (1_300, 0, 1_300)
    key = await money.key_snapshot("k1")
    assert (key.spent_micros, key.held_micros, key.remaining_micros) == (700, 0, 500)


async def test_far_from_the_edge_the_hold_is_the_estimate(cluster: Cluster) -> None:
    node = await cluster.start()
    await node.money.create_account("rich")
    await node.money.credit("rich", 50_000_000, reference="big")
    hold = await node.money.hold("rich", None, estimate_micros=30, worst_case_micros=4_000)
    assert (hold.held_micros, hold.strict) == (30, False)
    assert (await node.money.snapshot("rich")).held_micros == 30


async def test_a_settlement_happens_once_and_never_charges_above_the_worst_case(
    cluster: Cluster,
) -> None:
    node = await cluster.start()
    money = node.money
    await money.create_account("acct")
    await money.credit("acct", 10_000, reference="t")
    hold = await money.hold("acct", None, estimate_micros=10, worst_case_micros=500)
    first, again = await asyncio.gather(
        money.settle(hold, 900, reference="req-9"), money.settle(hold, 900, reference="req-9")
    )
    outcomes = sorted([first.outcome, again.outcome])
    assert outcomes == ["closed", "settled"]
    settled = first if first.outcome == "settled" else again
    assert (settled.charged_micros, settled.overrun) == (500, True)
    note = await node.pool.fetchval("SELECT note FROM ledger WHERE reference = 'req-9'")
    # The embedded wallet's words exactly (entry 19), so a ledger reads the same on both.
    assert note == charge_note(
        estimated=False, overrun=True, measured_micros=900, worst_case_micros=500
    )
    # A second hold settled under a charge reference already used: released, not charged.
    other = await money.hold("acct", None, estimate_micros=10, worst_case_micros=500)
    dup = await money.settle(other, 100, reference="req-9")
    assert (dup.outcome, dup.charged_micros) == ("duplicate_reference", 0)
    view = await money.snapshot("acct")
    assert (view.balance_micros, view.held_micros) == (9_500, 0)
    assert await money.ledger_sum("acct") == 9_500
    assert await money.open_hold_count() == 0


@pytest.mark.slow
async def test_300_concurrent_requests_from_three_instances_never_overdraw_2000_micros(
    cluster: Cluster,
) -> None:
    """$0.002 and 300 requests of worst case 100 µ$: at most 20 fit at once. Whatever the
    interleaving over three pools, the balance never goes below zero, and it is the ledger's
    sum at the end with nothing left held."""
    instances = [await cluster.start(pool_size=8) for _ in range(3)]
    money = instances[0].money
    await money.create_account("acct")
    await money.create_key("k", "acct")
    await money.credit("acct", 2_000, reference="seed")
    rng = random.Random(18)
    refused = 0
    charged: list[int] = []
    lowest: list[int] = []
    stop = asyncio.Event()

    async def watch() -> None:
        # The invariant, sampled while requests run: never below −credit_limit (here 0).
        while not stop.is_set():
            row = await instances[0].pool.fetchrow(
                "SELECT balance_micros, worst_micros FROM accounts WHERE id = 'acct'"
            )
            lowest.append(row["balance_micros"] - row["worst_micros"])
            await asyncio.sleep(0)

    async def request(n: int) -> None:
        nonlocal refused
        inst = instances[n % 3]
        try:
            hold: ClusterHold = await inst.money.hold(
                "acct", "k", estimate_micros=10, worst_case_micros=100, request_id=f"r{n}"
            )
        except QuotaError:
            refused += 1
            return
        try:
            await asyncio.sleep(rng.random() / 100)
            # Some upstreams fail (no charge), some report more than the worst case.
            cost = rng.choice([0, 40, 100, 100, 250])
            if cost == 0:
                await inst.money.release(hold)
            else:
                result = await inst.money.settle(hold, cost, reference=f"charge-{n}")
                charged.append(result.charged_micros)
        finally:
            await inst.money.release(hold)  # a no-op after settle: proves exactly-once

    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(request(n) for n in range(300)))
    stop.set()
    await watcher

    view = await money.snapshot("acct")
    assert view.balance_micros >= 0
    assert view.balance_micros == await money.ledger_sum("acct") == 2_000 - sum(charged)
    assert view.held_micros == 0 and await money.open_hold_count() == 0
    assert min(lowest) >= 0
    assert max(charged) <= 100  # never above the worst case
    assert refused > 0 and len(charged) > 0
    key = await money.key_snapshot("k")
    assert key.spent_micros == sum(charged)


async def test_a_dead_instances_holds_are_released_after_its_lease(cluster: Cluster) -> None:
    # Leases are generous against a loaded CI box: the "still alive" sweep must see it alive.
    doomed = await cluster.start(lease_s=1.5)
    survivor = await cluster.start()
    await survivor.money.create_account("acct")
    await survivor.money.credit("acct", 1_000, reference="seed")
    holds = [
        await doomed.money.hold(
            "acct", None, estimate_micros=50, worst_case_micros=200, request_id=f"d{i}"
        )
        for i in range(5)
    ]
    with pytest.raises(QuotaError):
        await survivor.money.hold("acct", None, estimate_micros=1, worst_case_micros=1)
    assert (await reap_expired(survivor.pool)).holds_released == 0  # still alive
    await asyncio.sleep(1.6)  # the doomed instance never renews: it "died"
    reaped = await reap_expired(survivor.pool)
    assert (reaped.instances_reaped, reaped.holds_released) == (1, 5)
    rows = await survivor.pool.fetch("SELECT request_id FROM abandoned_holds ORDER BY hold_id")
    assert [r["request_id"] for r in rows] == [f"d{i}" for i in range(5)]
    view = await survivor.money.snapshot("acct")
    assert (view.balance_micros, view.held_micros, view.available_micros) == (1_000, 0, 1_000)
    # The survivor can use the released headroom; the dead one is fenced off for good.
    await survivor.money.hold("acct", None, estimate_micros=1, worst_case_micros=1_000)
    with pytest.raises(LeaseLost):
        await doomed.lease.renew()
    with pytest.raises(LeaseLost):
        await doomed.money.hold("acct", None, estimate_micros=1, worst_case_micros=1)
    late = await doomed.money.settle(holds[0], 200, reference="late")
    assert (late.outcome, late.charged_micros) == ("closed", 0)
    assert await survivor.money.ledger_sum("acct") == 1_000


async def test_a_renewed_lease_keeps_its_holds(cluster: Cluster) -> None:
    node = await cluster.start(lease_s=1.5)
    other = await cluster.start()
    await node.money.create_account("acct")
    await node.money.credit("acct", 1_000, reference="seed")
    hold = await node.money.hold("acct", None, estimate_micros=1, worst_case_micros=300)
    for _ in range(4):  # 2 s in all: past the first lease
        await asyncio.sleep(0.5)
        await node.lease.renew()
        assert (await reap_expired(other.pool)).holds_released == 0
    result = await node.money.settle(hold, 300, reference="kept")
    assert (result.outcome, result.charged_micros) == ("settled", 300)


async def test_the_pool_rolls_back_a_transaction_left_open_on_release(cluster: Cluster) -> None:
    node = await cluster.start(pool_size=1)
    await node.money.create_account("acct")
    async with node.pool.acquire() as conn:
        await conn.execute("BEGIN")
        await conn.execute(
            "INSERT INTO ledger (account_id, kind, amount_micros, reference)"
            " VALUES ('acct', 'credit', 5, 'left-open')"
        )
    async with node.pool.acquire() as conn:  # the pool's only connection, back again
        assert not conn.is_in_transaction()
    assert await node.money.ledger_sum("acct") == 0


async def test_settle_many_ends_each_hold_once_in_one_round_trip(cluster: Cluster) -> None:
    node = await cluster.start()
    money = node.money
    await money.create_account("acct")
    await money.credit("acct", 10_000, reference="seed")
    holds = [
        await money.hold("acct", None, estimate_micros=1, worst_case_micros=1_000) for _ in range(3)
    ]
    results = await money.settle_many(
        [
            (holds[0], 400, "b-0", False),
            (holds[1], 0, "", False),
            (holds[2], 1_500, "b-2", True),
            (holds[0], 400, "b-0-again", False),  # the same hold twice: once only
        ]
    )
    assert [(r.outcome, r.charged_micros) for r in results] == [
        ("settled", 400),
        ("released", 0),
        ("settled", 1_000),
        ("closed", 0),
    ]
    assert results[2].overrun
    view = await money.snapshot("acct")
    assert (view.balance_micros, view.held_micros) == (8_600, 0)
    assert await money.ledger_sum("acct") == 8_600


class FlakyStore(PgMoneyStore):
    """Fails its first ``fail`` batches as an unreachable database would."""

    def __init__(self, pool: Any, instance_id: str, fail: int) -> None:
        super().__init__(pool, instance_id)
        self.fail = fail
        self.calls = 0

    async def settle_many(self, items: Any) -> Any:
        self.calls += 1
        if self.fail:
            self.fail -= 1
            raise ConnectionResetError("connection lost (injected)")
        return await super().settle_many(items)


async def test_the_settler_group_commits_and_retries_a_failed_batch_without_double_charging(
    cluster: Cluster,
) -> None:
    node = await cluster.start()
    await node.money.create_account("acct")
    await node.money.credit("acct", 1_000_000, reference="seed")
    holds = [
        await node.money.hold("acct", None, estimate_micros=1, worst_case_micros=100)
        for _ in range(200)
    ]
    store = FlakyStore(node.pool, node.lease.instance_id, fail=2)
    ended: list[tuple[ClusterHold, str]] = []
    settler = Settler(
        store,
        max_batch=64,
        retry_initial_s=0.01,
        on_settled=lambda hold, result: ended.append((hold, result.outcome)),
    )
    task = asyncio.create_task(settler.run())
    try:
        for n, hold in enumerate(holds):
            settler.submit(hold, 0 if n % 10 == 0 else 50, reference=f"s-{n}")
        settler.submit(holds[1], 50, reference="s-1-again")  # a second end: charges nothing
        await asyncio.wait_for(settler.drain(), timeout=30)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert settler.failures == 2 and settler.pending == 0
    assert settler.batches_written == 4 and store.calls == 6  # 201 items in batches of 64
    assert sorted(outcome for _, outcome in ended).count("closed") == 1
    view = await node.money.snapshot("acct")
    assert (view.held_micros, await node.money.open_hold_count()) == (0, 0)
    assert view.balance_micros == 1_000_000 - 180 * 50 == await node.money.ledger_sum("acct")


@pytest.mark.slow
async def test_batches_from_two_instances_in_opposite_orders_never_deadlock(
    cluster: Cluster,
) -> None:
    """Each batch locks its accounts in one global order, whatever order it was given in."""
    a, b = await cluster.start(pool_size=2), await cluster.start(pool_size=2)
    accounts = [f"acct{n:02d}" for n in range(20)]
    for account in accounts:
        await a.money.create_account(account)
        await a.money.credit(account, 1_000_000, reference="seed")
    for _ in range(5):
        holds_a = [
            await a.money.hold(x, None, estimate_micros=1, worst_case_micros=10) for x in accounts
        ]
        holds_b = [
            await b.money.hold(x, None, estimate_micros=1, worst_case_micros=10) for x in accounts
        ]
        forward = [(h, 5, f"fa-{h.hold_id}", False) for h in holds_a]
        backward = [(h, 5, f"fb-{h.hold_id}", False) for h in reversed(holds_b)]
        done = await asyncio.gather(a.money.settle_many(forward), b.money.settle_many(backward))
        assert all(r.outcome == "settled" for batch in done for r in batch)
        # Results come back in the order the items were given.
        assert [r.charged_micros for r in done[1]] == [5] * len(accounts)
    for account in accounts:
        assert await a.money.ledger_sum(account) == 1_000_000 - 5 * 2 * 5


async def test_refusals_say_exactly_what_the_embedded_wallet_says(cluster: Cluster) -> None:
    """Both engines word a 402 through relay.money.quota_messages: the same text, the cap
    included, for the balance, a key's lifetime cap or period budget, an account budget."""
    node = await cluster.start()
    now_ms = 1_769_860_800_000  # 2026-01-31T12:00:00Z, one clock for both engines
    calendar = BudgetCalendar()
    node.money.use_periods(lambda: calendar, lambda: now_ms)
    wallet = Wallet(lambda entry: None, wall_clock_ms=lambda: now_ms)
    cases: list[tuple[str, str | None, str, BudgetPeriod | None]] = [
        # (account, key, budget owner, period): each refused for a 1_500 worst case
        ("poor", None, "balance", None),
        ("k-life", "k-life", "key", None),
        ("k-month", "k-month", "key", "month"),
        ("a-day", None, "account", "day"),
        ("a-life", None, "account", None),
    ]
    for account, key, owner, period in cases:
        balance = 1_000 if owner == "balance" else 50_000
        await node.money.create_account(account)
        await node.money.credit(account, balance, reference=f"seed-{account}")
        wallet.load_account(account, mode="prepaid", credit_limit_micros=0, balance_micros=balance)
        if owner == "key" and key is not None:
            await node.money.create_key(key, account, spend_cap_micros=1_200)
            await node.pool.execute(
                "UPDATE api_keys SET budget_period = $2 WHERE id = $1", key, period
            )
            wallet.load_key(key, account, spend_cap_micros=1_200, spent_micros=0)
            wallet.set_key_budget_period(key, period)
        if owner == "account":
            await node.pool.execute(
                "UPDATE accounts SET budget_micros = 1200, budget_period = $2 WHERE id = $1",
                account,
                period,
            )
            wallet.set_account_budget(account, 1_200, period)
        with pytest.raises(QuotaError) as embedded:
            wallet.hold(account, key, estimate_micros=100, worst_case_micros=1_500)
        with pytest.raises(QuotaError) as clustered:
            await node.money.hold(account, key, estimate_micros=100, worst_case_micros=1_500)
        assert str(clustered.value) == str(embedded.value), (account, str(embedded.value))
        expected = "$0.0012" if owner != "balance" else "$0.001 is available"
        assert expected in str(clustered.value)
