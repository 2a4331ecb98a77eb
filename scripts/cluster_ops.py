#!/usr/bin/env python3
"""Per-operation costs of relay's cluster store, for docs/scaling.md's capacity model.

Starts a throwaway PostgreSQL and Redis on 127.0.0.1 (tests/support_cluster.py; default
engine settings: fsync and synchronous_commit on) and times, from three "instances" (three
pools / clients in this process):

- ``hold+settle``: one ``PgMoneyStore.hold`` then one ``settle`` (two transactions);
- ``take+release``: one ``RedisLimiter.take`` over 2 buckets (RPM, TPM) and 2 concurrency
  sets (key, account), then one ``release`` with a TPM correction;

each sequentially (c=1: latency) and with 16 concurrent callers, on one hot account (every
operation serialised on one row lock) and spread over 100 accounts. It reports wall µs/op,
this process's CPU µs/op (the relay side) and the engine's CPU µs/op (read from /proc for
the PostgreSQL backends and for redis-server). Bounded: ``--ops`` round trips per line.

    .venv/bin/python scripts/cluster_ops.py --ops 3000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import redis.asyncio as redis_asyncio  # noqa: E402
from support_cluster import run_postgres, run_redis  # noqa: E402

from relay.cluster.pg_leases import InstanceLease  # noqa: E402
from relay.cluster.pg_money import PgMoneyStore  # noqa: E402
from relay.cluster.pg_pool import create_pool  # noqa: E402
from relay.cluster.pg_schema import migrate  # noqa: E402
from relay.cluster.redis_limits import Bucket, Concurrency, RedisLimiter  # noqa: E402
from relay.cluster.settler import Settler  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes so far (from /proc/PID/stat)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def postgres_pids(data: str) -> list[int]:
    """The postmaster and every child of it (its backends and helpers)."""
    master = int(Path(data, "postmaster.pid").read_text().split()[0])
    pids = [master]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master:
                pids.append(int(entry.name))
    return pids


async def measure(
    label: str,
    op: Callable[[int], Awaitable[None]],
    ops: int,
    concurrency: int,
    engine_pids: Callable[[], list[int]],
) -> None:
    pids = engine_pids()
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < ops:
            n = next_index
            next_index += 1
            await op(n)

    engine_before = cpu_seconds(pids)
    cpu_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    relay_cpu = time.process_time() - cpu_before
    engine_cpu = cpu_seconds(pids) - engine_before
    print(
        f"{label:<44} c={concurrency:<3} {ops / wall:>8.0f} ops/s {wall / ops * 1e6:>8.0f} us/op"
        f" wall {relay_cpu / ops * 1e6:>6.0f} us/op client CPU"
        f" {engine_cpu / ops * 1e6:>6.0f} us/op engine CPU",
        flush=True,
    )


async def bench_postgres(dsn: str, data: str, ops: int) -> None:
    pools = [await create_pool(dsn, min_size=8, max_size=8) for _ in range(3)]
    async with pools[0].acquire() as conn:
        await migrate(conn)
    stores = []
    leases = []
    for n, pool in enumerate(pools):
        lease = await InstanceLease.register(pool, 30.0, name=f"bench{n}")
        leases.append(lease)
        stores.append(PgMoneyStore(pool, lease.instance_id))

    async def heartbeat() -> None:
        # As a live instance does: an unrenewed lease is fenced off mid-run.
        while True:
            await asyncio.sleep(leases[0].heartbeat_interval_s)
            for lease in leases:
                await lease.renew()

    beating = asyncio.create_task(heartbeat())
    for a in range(100):
        await stores[0].create_account(f"a{a}")
        await stores[0].create_key(f"k{a}", f"a{a}", spend_cap_micros=10**12)
        await stores[0].credit(f"a{a}", 10**12, reference="seed")
    run = 0

    def hold_settle(accounts: int) -> Callable[[int], Awaitable[None]]:
        async def op(n: int) -> None:
            store = stores[n % 3]
            account = n % accounts
            hold = await store.hold(
                f"a{account}", f"k{account}", estimate_micros=50, worst_case_micros=4_000
            )
            await store.settle(hold, 120, reference=f"r{run}-{n}")

        return op

    for accounts, concurrency in ((1, 1), (1, 16), (100, 16)):
        run += 1
        spread = "1 hot account" if accounts == 1 else f"{accounts} accounts"
        await measure(
            f"PostgreSQL hold+settle, {spread}",
            hold_settle(accounts),
            ops,
            concurrency,
            lambda: postgres_pids(data),
        )
    # Holds placed one by one, settlements group-committed by each instance's settler.
    settlers = [Settler(store) for store in stores]
    tasks = [asyncio.create_task(settler.run()) for settler in settlers]

    async def hold_then_submit(n: int) -> None:
        account = n % 100
        hold = await stores[n % 3].hold(
            f"a{account}", f"k{account}", estimate_micros=50, worst_case_micros=4_000
        )
        settlers[n % 3].submit(hold, 120, reference=f"batched-{n}")

    async def hold_and_drain(n: int) -> None:
        await hold_then_submit(n)
        if n % 16 == 15:
            await asyncio.gather(*(settler.drain() for settler in settlers))

    await measure(
        "PostgreSQL hold + settler (batched), 100 accts",
        hold_and_drain,
        ops,
        16,
        lambda: postgres_pids(data),
    )
    await asyncio.gather(*(settler.drain() for settler in settlers))
    for task in tasks:
        task.cancel()
    batches = sum(settler.batches_written for settler in settlers)
    print(f"  (settlers wrote {ops} settlements in {batches} batches)", flush=True)
    beating.cancel()
    for pool in pools:
        await pool.close()


async def bench_redis(url: str, pid: int, ops: int) -> None:
    clients = [redis_asyncio.Redis.from_url(url) for _ in range(3)]
    limiters = [RedisLimiter(c, f"bench{n}") for n, c in enumerate(clients)]

    def take_release(keys: int) -> Callable[[int], Awaitable[None]]:
        async def op(n: int) -> None:
            k = n % keys
            rpm = Bucket(f"key:{k}:rpm", 10**9)
            tpm = Bucket(f"key:{k}:tpm", 10**12, amount=500)
            slot = await limiters[n % 3].take(
                buckets=[rpm, tpm],
                concurrency=[Concurrency(f"key:{k}", 0), Concurrency(f"acct:{k}", 0)],
            )
            await limiters[n % 3].release(slot, corrections=[(tpm, -100)])

        return op

    for keys, concurrency in ((1, 1), (1, 16), (100, 16)):
        spread = "1 hot key" if keys == 1 else f"{keys} keys"
        await measure(
            f"Redis take+release (2 buckets, 2 sets), {spread}",
            take_release(keys),
            ops,
            concurrency,
            lambda: [pid],
        )
    for client in clients:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=3000, help="round trips per line")
    args = parser.parse_args()
    with run_postgres() as pg, run_redis() as rd:
        asyncio.run(bench_postgres(pg.dsn(), pg.data, args.ops))
        asyncio.run(bench_redis(rd.url, rd.pid, args.ops))


if __name__ == "__main__":
    main()
