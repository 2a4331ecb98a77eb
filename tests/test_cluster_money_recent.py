"""The hold's recent-spend threshold in cluster mode, against a real PostgreSQL.

Embedded, ``Wallet.plan_hold`` holds the estimate only while the headroom left after the
worst case is at least T = max(fast_path_margin, spend of the last one to two windows);
cluster mode keeps that spend in two window buckets on the account's and the key's rows
(``relay.storage.schema_recent_spend``). Two stores (two pools, two leases) on one
database must decide exactly as one wallet: the same holds strict or fast, the same
refusals, whichever instance settled the spend.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support_accounts import auth, chat_body
from test_cluster_budgets import two_instances

from relay.cluster.pg_holds import ClusterHold
from relay.cluster.pg_leases import InstanceLease
from relay.cluster.pg_money import PgMoneyStore
from relay.cluster.pg_pool import create_pool
from relay.cluster.pg_schema import migrate
from relay.errors import QuotaError
from relay.money.budget import BudgetCalendar
from relay.money.records import Hold, LedgerEntry
from relay.money.wallet import Wallet

asyncpg = pytest.importorskip("asyncpg")
pytest.importorskip("redis")

WINDOW_S = 60.0
WINDOW_MS = 60_000
MARGIN = 100_000
_CALENDAR = BudgetCalendar()


@dataclass
class FakeClock:
    """Wall-clock ms shared by the wallet and the stores; a little past a window's start,
    so no step lands on a boundary."""

    now_ms: int = 1_000 * WINDOW_MS + 1_000

    def ms(self) -> int:
        return self.now_ms

    def seconds(self) -> float:
        return self.now_ms / 1000

    def advance(self, windows: float) -> None:
        self.now_ms += int(windows * WINDOW_MS)


@dataclass
class Twins:
    """One embedded wallet and two cluster stores on one database, on one clock."""

    clock: FakeClock
    wallet: Wallet
    stores: list[PgMoneyStore]
    pools: list[Any] = field(default_factory=list)

    async def fund(self, account: str, balance: int, key: str, cap: int) -> None:
        self.wallet.load_account(account, mode="prepaid", credit_limit_micros=0, balance_micros=0)
        self.wallet.credit(account, balance, reference=f"top-up-{account}")
        self.wallet.load_key(key, account, spend_cap_micros=cap, spent_micros=0)
        await self.stores[0].create_account(account)
        await self.stores[0].credit(account, balance, reference=f"top-up-{account}")
        await self.stores[0].create_key(key, account, spend_cap_micros=cap)


@pytest.fixture
async def twins(pg_database: str) -> AsyncIterator[Twins]:
    clock = FakeClock()
    entries: list[LedgerEntry] = []
    wallet = Wallet(
        entries.append,
        fast_path_margin_micros=MARGIN,
        spend_window_s=WINDOW_S,
        clock=clock.seconds,
        wall_clock_ms=clock.ms,
    )
    made = Twins(clock, wallet, [])
    try:
        for name in ("a", "b"):
            pool = await create_pool(pg_database, min_size=1, max_size=2)
            made.pools.append(pool)
            async with pool.acquire() as conn:
                await migrate(conn)
            lease = await InstanceLease.register(pool, 60.0, name=name)
            store = PgMoneyStore(
                pool, lease.instance_id, fast_path_margin_micros=MARGIN, spend_window_s=WINDOW_S
            )
            store.use_periods(lambda: _CALENDAR, clock.ms)
            made.stores.append(store)
        yield made
    finally:
        for pool in made.pools:
            await pool.close()


async def _spend(twins: Twins, store: PgMoneyStore, key: str | None, cost: int, ref: str) -> None:
    """One request of worst case ``cost`` charged in full, on the wallet and on ``store``."""
    held = twins.wallet.hold("acct", key, estimate_micros=cost // 4, worst_case_micros=cost)
    twins.wallet.settle(held, cost, reference=ref)
    placed = await store.hold("acct", key, estimate_micros=cost // 4, worst_case_micros=cost)
    settled = await store.settle(placed, cost, reference=ref)
    assert settled.charged_micros == cost


async def _both_hold(twins: Twins, store: PgMoneyStore, key: str | None, worst: int) -> bool:
    """Place the same hold on both sides; they must agree; True when it is strict."""
    embedded = twins.wallet.hold("acct", key, estimate_micros=worst // 4, worst_case_micros=worst)
    preview = await store.preview_hold(
        "acct", key, estimate_micros=worst // 4, worst_case_micros=worst
    )
    cluster = await store.hold("acct", key, estimate_micros=worst // 4, worst_case_micros=worst)
    assert preview == cluster.held_micros  # a dry run reports what the hold then holds
    assert (cluster.held_micros, cluster.strict) == (embedded.held_micros, embedded.strict)
    twins.wallet.release(embedded)
    await store.release(cluster)
    return cluster.strict


async def test_recent_spend_raises_the_threshold_for_two_windows_across_instances(
    twins: Twins,
) -> None:
    a, b = twins.stores
    await twins.fund("acct", 10_000_000, "k", 0)
    # Margin alone: headroom 10M − 1M is far above 0.1M, so the estimate is held.
    assert not await _both_hold(twins, a, "k", 1_000_000)
    for n in range(3):  # 6M spent through instance b in this window
        await _spend(twins, b, "k", 2_000_000, f"req-{n}")
    # Instance a sees b's spend: headroom 4M − 1M = 3M < T = 6M, so the worst case is held.
    assert await _both_hold(twins, a, "k", 1_000_000)
    twins.clock.advance(1)  # the spend is the previous window's: still counted
    assert await _both_hold(twins, a, "k", 1_000_000)
    twins.clock.advance(1)  # two windows on: forgotten, the margin rules again
    assert not await _both_hold(twins, a, "k", 1_000_000)
    view = await a.snapshot("acct")
    assert (view.balance_micros, view.held_micros) == (4_000_000, 0)


async def test_a_strict_hold_is_admitted_exactly_when_the_worst_case_fits(
    twins: Twins,
) -> None:
    """The threshold changes what is held, never what is admitted: the worst case is what
    admission checks, with or without recent spend."""
    a, b = twins.stores
    await twins.fund("acct", 5_000_000, "k", 0)
    await _spend(twins, a, None, 3_000_000, "big")
    assert await _both_hold(twins, b, "k", 2_000_000)  # fits exactly: held in full
    with pytest.raises(QuotaError, match="insufficient balance"):
        twins.wallet.hold("acct", "k", estimate_micros=1, worst_case_micros=2_000_001)
    with pytest.raises(QuotaError, match="insufficient balance"):
        await b.hold("acct", "k", estimate_micros=1, worst_case_micros=2_000_001)


async def test_a_capped_keys_recent_spend_makes_its_holds_strict(twins: Twins) -> None:
    a, b = twins.stores
    await twins.fund("acct", 1_000_000_000, "k", 10_000_000)
    assert not await _both_hold(twins, a, "k", 1_000_000)
    await _spend(twins, b, "k", 5_000_000, "k-1")
    # The key: 10M − 5M spent − 1M = 4M < T = 5M (the account is far from its edge).
    assert await _both_hold(twins, a, "k", 1_000_000)
    # Without the key the account alone decides: 994M left, far above 5M.
    assert not await _both_hold(twins, a, None, 1_000_000)
    row = await twins.pools[0].fetchrow(
        "SELECT recent_window, recent_current_micros, recent_previous_micros"
        " FROM api_keys WHERE id = 'k'"
    )
    assert tuple(row) == (twins.clock.now_ms // WINDOW_MS, 5_000_000, 0)


async def test_a_random_run_decides_as_the_embedded_wallet(twins: Twins) -> None:
    """Holds, settlements, releases and time through both instances in a seeded random
    order: every hold is refused, fast or strict on the cluster exactly as on the wallet."""
    rng = random.Random(19)
    await twins.fund("acct", 6_000_000, "k", 4_000_000)
    open_holds: list[tuple[Hold, ClusterHold]] = []
    decisions: list[str] = []
    for step in range(160):
        store = twins.stores[step % 2]
        move = rng.random()
        if move < 0.45 or not open_holds:
            key = "k" if rng.random() < 0.7 else None
            pair = await _hold_on_both(twins, store, key, rng.randrange(10_000, 400_000))
            if pair is None:
                decisions.append("refused")
            else:
                decisions.append("strict" if pair[1].strict else "fast")
                open_holds.append(pair)
        elif move < 0.85:
            embedded, cluster = open_holds.pop(rng.randrange(len(open_holds)))
            cost = rng.randrange(0, embedded.worst_case_micros + 1)
            entry = twins.wallet.settle(embedded, cost, reference=f"r{step}")
            settled = await store.settle(cluster, cost, reference=f"r{step}")
            assert settled.charged_micros == (0 if entry is None else -entry.amount_micros)
        else:
            twins.clock.advance(rng.choice((0.3, 0.7, 1.0, 2.5)))
    assert {"fast", "strict", "refused"} <= set(decisions), decisions
    embedded_view = twins.wallet.snapshot("acct")
    cluster_view = await twins.stores[0].snapshot("acct")
    assert cluster_view.balance_micros == embedded_view.balance_micros
    assert cluster_view.held_micros == embedded_view.held_micros


async def _hold_on_both(
    twins: Twins, store: PgMoneyStore, key: str | None, worst: int
) -> tuple[Hold, ClusterHold] | None:
    """The same hold on both sides, left open; None when both refused it."""
    estimate = worst // 4
    try:
        embedded = twins.wallet.hold("acct", key, estimate_micros=estimate, worst_case_micros=worst)
    except QuotaError as refused:
        with pytest.raises(QuotaError) as also:
            await store.hold("acct", key, estimate_micros=estimate, worst_case_micros=worst)
        assert str(also.value).split(":")[0] == str(refused).split(":")[0]
        return None
    preview = await store.preview_hold(
        "acct", key, estimate_micros=estimate, worst_case_micros=worst
    )
    cluster = await store.hold("acct", key, estimate_micros=estimate, worst_case_micros=worst)
    assert (cluster.held_micros, cluster.strict) == (embedded.held_micros, embedded.strict)
    assert preview == cluster.held_micros
    return embedded, cluster


async def test_a_settlement_rolled_back_counts_no_spend_and_its_retry_counts_once(
    twins: Twins,
) -> None:
    """The settler writes usage rows in the settlement's transaction: when that transaction
    raises, the charge, the release and the recent spend all roll back together, and the
    retry settles the hold exactly once."""
    a, b = twins.stores
    await twins.fund("acct", 10_000_000, "k", 0)
    hold = await a.hold("acct", "k", estimate_micros=500_000, worst_case_micros=2_000_000)
    with pytest.raises(RuntimeError, match="usage row"):
        async with a.transaction() as conn:
            [settled] = await a.settle_many([(hold, 2_000_000, "req-1", False)], conn=conn)
            assert settled.outcome == "settled"
            raise RuntimeError("the usage row could not be written")
    recent = "SELECT recent_current_micros FROM accounts WHERE id = 'acct'"
    assert await twins.pools[0].fetchval(recent) == 0
    assert await a.open_hold_count("acct") == 1
    first, again = await b.settle_many(
        [(hold, 2_000_000, "req-1", False), (hold, 2_000_000, "req-1", False)]
    )
    assert (first.outcome, again.outcome) == ("settled", "closed")
    assert await twins.pools[0].fetchval(recent) == 2_000_000
    assert await a.open_hold_count("acct") == 0


async def test_a_dry_runs_preview_counts_a_keys_period_spend_as_the_hold_does(
    twins: Twins,
) -> None:
    """A key with a monthly budget: what it spent last month does not count, so the preview
    (and the hold) is the estimate where the lifetime spend would make it strict."""
    a, b = twins.stores
    # The ledger stamps rows with PostgreSQL's clock: the stores' clock starts at it.
    twins.clock.now_ms = time.time_ns() // 1_000_000 // WINDOW_MS * WINDOW_MS + 1_000
    await twins.fund("acct", 1_000_000_000, "k", 10_000_000)
    await twins.pools[0].execute("UPDATE api_keys SET budget_period = 'month' WHERE id = 'k'")
    for n in range(2):  # 6M spent this month
        hold = await a.hold("acct", "k", estimate_micros=10, worst_case_micros=3_000_000)
        await b.settle(hold, 3_000_000, reference=f"old-{n}")
    twins.clock.advance(32 * 24 * 60)  # next month: its counter does not exist yet
    held = []
    for n, worst in enumerate((4_000_000, 5_950_000)):
        preview = await a.preview_hold("acct", "k", estimate_micros=10, worst_case_micros=worst)
        hold = await a.hold("acct", "k", estimate_micros=10, worst_case_micros=worst)
        assert preview == hold.held_micros, n
        held.append(hold.held_micros)
        await b.settle(hold, 0 if n else worst, reference=f"new-{n}")
        twins.clock.advance(2)  # recent spend forgotten: only the period's spend decides
    # 10M − 0 − 4M leaves 6M (lifetime spend would leave 0); then 10M − 4M − 5.95M < MARGIN.
    assert held == [10, 5_950_000]
    assert await a.preview_hold("nobody", None, estimate_micros=1, worst_case_micros=2) is None


async def test_a_dry_run_through_relay_serve_reports_the_threshold_of_recent_spend(
    tmp_path: Path, pg_database: str, redis_server: Any, admin_token: str
) -> None:
    """Two instances: spend through one makes the other's dry run report the worst case
    once the headroom after it is within the recent spend (margin $1, 60 s windows)."""
    async with two_instances(tmp_path, pg_database, redis_server) as (one, two):
        account, key = await one.funded_key("acme", amount_usd="6")
        seen = set()
        spent = 0
        for _ in range(5):
            response = await one.client.post(
                "/v1/chat/completions?dryRun=true",
                json=chat_body("dear-gpt"),
                headers=auth(key["secret"]),
            )
            assert response.status_code == 200, response.text
            quote = response.json()["estimate"]
            headroom = quote["available_micros"] - quote["worst_case_cost_micros"]
            fast = headroom >= max(1_000_000, spent)
            expected = quote["estimated_cost_micros" if fast else "worst_case_cost_micros"]
            assert quote["hold_micros"] == expected, (quote, spent)
            seen.add(fast)
            paid = await two.client.post(
                "/v1/chat/completions", json=chat_body("dear-gpt"), headers=auth(key["secret"])
            )
            assert paid.status_code == 200, paid.text
            spent += int(paid.json()["metadata"]["cost_micros"])
            await _settled_holds(pg_database, account["id"])
        assert seen == {True, False}


async def _settled_holds(dsn: str, account_id: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(200):
            open_holds = "SELECT count(*) FROM holds WHERE account_id = $1"
            if not await conn.fetchval(open_holds, account_id):
                return
            await asyncio.sleep(0.05)
        raise AssertionError("holds still open")
    finally:
        await conn.close()
