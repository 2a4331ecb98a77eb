#!/usr/bin/env python3
"""What the SQLite writer's group commit costs the event loop at c=1 (issue 19, part 2).

No network: one process pinned to one core (as relay is in scripts/bench) runs relay's real
``Database`` and ``UsageLog``, and a loop that plays c=1 requests: each request spends
``--work-us`` of CPU in Python on the event loop (what relay spends on one), with one
``await`` in the middle (the upstream answer), then queues its usage row and charge (the
real ``UsageLog.record``), then waits ``--gap-us`` (the client's turnaround). A request's
wall time is its own work plus whatever the writer thread took from it: the GIL and the
shared core. So p99 - p50 of the request's wall time is the p99 the writer adds.

Per run it prints the requests' p50/p99/max (µs), the number of flushes, rows per flush,
and the writer thread's CPU time per flush (``time.thread_time`` around the batch).

    .venv/bin/python scripts/writer_lag.py                       # every variant, 4 s each
    .venv/bin/python scripts/writer_lag.py --variant baseline --variant nice --seconds 6

Variants: baseline (as relay runs today), switch-0.5ms (``sys.setswitchinterval``),
flush-10ms and flush-100ms (``flush_interval_ms``), nice and nice-19 (``[server]
writer_nice`` = 10 or 19: the writer thread's scheduling priority lowered, so it yields the
core to the loop), no-writes (no usage rows at all: the floor this box sets).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relay.money.records import LedgerEntry  # noqa: E402
from relay.storage import batch as batch_module  # noqa: E402
from relay.storage.db import Database  # noqa: E402
from relay.usage.log import UsageLog, UsageRecord  # noqa: E402


@dataclass(frozen=True)
class Variant:
    flush_ms: int = 50
    switch_s: float = 0.005
    writer_nice: int = 0
    record: bool = True  # False: no usage rows at all, the floor the box itself sets


VARIANTS = {
    "baseline": Variant(),
    "switch-0.5ms": Variant(switch_s=0.0005),
    "flush-10ms": Variant(flush_ms=10),
    "flush-100ms": Variant(flush_ms=100),
    "nice": Variant(writer_nice=10),
    "nice-5": Variant(writer_nice=5),
    "nice-19": Variant(writer_nice=19),
    "no-writes": Variant(record=False),
}


def _thread_cpu_ns(tid: int) -> int:
    """A thread's time on a CPU so far, in ns (Linux schedstat), from any thread."""
    with open(f"/proc/self/task/{tid}/schedstat") as stat:
        return int(stat.read().split()[0])


def _burn(us: float) -> None:
    end = time.perf_counter() + us / 1e6
    while time.perf_counter() < end:
        pass


async def run_variant(name: str, variant: Variant, args: argparse.Namespace) -> dict[str, object]:
    sys.setswitchinterval(variant.switch_s)
    flush_cpu: list[float] = []
    sizes: list[int] = []
    original = batch_module.run_batch

    def timed_batch(conn, fns, **kwargs):  # type: ignore[no-untyped-def]
        started = time.thread_time()
        try:
            return original(conn, fns, **kwargs)
        finally:
            flush_cpu.append(time.thread_time() - started)
            sizes.append(len(fns))

    import relay.storage.writer as writer_module

    writer_module.run_batch = timed_batch  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="relay-writer-lag-") as tmp:
        db = await Database.open(
            Path(tmp) / "relay.db",
            flush_interval_s=variant.flush_ms / 1000,
            writer_nice=variant.writer_nice,
        )
        try:
            now_ms = int(time.time() * 1000)
            await db.execute_write(
                "INSERT INTO accounts (id, name, mode, created_at_ms, updated_at_ms) "
                "VALUES ('acct', 'bench', 'prepaid', ?, ?)",
                (now_ms, now_ms),
            )
            usage = UsageLog(db)
            # A write function runs in the writer thread: it tells its thread id.
            writer_tid = await db.write(lambda conn: threading.get_native_id())
            stolen: list[float] = []
            walls: list[float] = []
            flush_cpu.clear()
            sizes.clear()
            loop = asyncio.get_running_loop()
            stop_at = loop.time() + args.seconds
            n = 0
            most_pending = 0  # the queue's high-water mark: does the writer keep up?
            while loop.time() < stop_at:
                n += 1
                started = time.perf_counter()
                writer_before = _thread_cpu_ns(writer_tid)
                _burn(args.work_us / 2)
                await asyncio.sleep(0)  # the upstream's answer: one trip through the loop
                _burn(args.work_us / 2)
                request_id = f"req-{name}-{n}"
                if variant.record:
                    usage.record(
                        UsageRecord(
                            request_id=request_id,
                            ts_ms=now_ms,
                            endpoint="/v1/chat/completions",
                            status=200,
                            account_id="acct",
                            key_id="key",
                            model="bench-model",
                            provider="up",
                            upstream_model="bench-model",
                            prompt_tokens=40,
                            completion_tokens=60,
                            cost_micros=42,
                            latency_ms=1,
                        ),
                        LedgerEntry("acct", "charge", -42, request_id, "key", request_id),
                    )
                walls.append((time.perf_counter() - started) * 1e6)
                stolen.append((_thread_cpu_ns(writer_tid) - writer_before) / 1000)
                most_pending = max(most_pending, db.pending_writes)
                await asyncio.sleep(args.gap_us / 1e6)
            await db.flush()
        finally:
            await db.close()
            writer_module.run_batch = original  # type: ignore[assignment]
    walls.sort()
    stolen.sort()
    p50 = walls[len(walls) // 2]
    p99 = walls[int(len(walls) * 0.99)]
    return {
        "variant": name,
        "requests": len(walls),
        "p50_us": round(p50),
        "p99_us": round(p99),
        "added_p99_us": round(p99 - p50),
        "max_us": round(walls[-1]),
        # The writer thread's CPU time inside each request: on one core, what it delayed it.
        "writer_in_request_p99_us": round(stolen[int(len(stolen) * 0.99)]),
        "writer_in_request_max_us": round(stolen[-1]),
        "requests_hit_pct": round(100 * sum(1 for x in stolen if x > 0) / len(stolen), 1),
        "flushes": len(sizes),
        "most_pending": most_pending,
        "rows_per_flush": round(statistics.mean(sizes), 1) if sizes else 0,
        "writer_cpu_us_per_flush": round(1e6 * statistics.mean(flush_cpu)) if flush_cpu else 0,
        "writer_cpu_us_per_row": round(1e6 * sum(flush_cpu) / max(1, sum(sizes)), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--work-us", type=float, default=600.0)
    parser.add_argument("--gap-us", type=float, default=600.0)
    parser.add_argument("--rounds", type=int, default=1, help="repeat the variants, interleaved")
    parser.add_argument("--cpu", type=int, default=0, help="the one core to run on")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    names = args.variant or list(VARIANTS)
    for _ in range(args.rounds):
        for name in names:
            print(json.dumps(asyncio.run(run_variant(name, VARIANTS[name], args))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
