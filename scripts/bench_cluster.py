"""What a cluster target costs beyond its relay processes, for scripts/bench.

Counters read before and after each measured run, without extensions or instrumentation:

- PostgreSQL: the CPU time of the postmaster and every backend (``/proc``, utime + stime);
  the transactions of the bench database from ``pg_stat_database`` (``xact_commit +
  xact_rollback``; each backend reports them at most once a second and within 10 s of going
  idle, so a run's figure includes up to about a second of the previous run's and misses
  as much of its own: fine over a run of several seconds); and the write transactions from
  the transaction id counter (``pg_snapshot_xmax``), which is exact: every hold and every
  settler batch is one.
- Redis: redis-server's CPU time and ``INFO commandstats`` calls (the ``INFO`` probes left
  out), per command. The commands a script runs are counted too, so the round trips are the
  script calls (``evalsha``: relay's limiter and invalidation scripts) plus the plain
  commands relay sends (``get`` of the invalidation version from the heartbeat).
- The front (nginx, for the multi-instance targets): its master and workers' CPU time.

Divided by the run's requests these give the per-request figures of docs/scaling.md §3.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["EngineSnapshot", "print_engine_table", "tree_ticks"]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in field 2 may hold spaces; the fields after its ")" are fixed.
    return text.rpartition(")")[2].split()


def tree_ticks(pid: int) -> int:
    """utime + stime of ``pid`` and its direct children (a postmaster's backends, nginx's
    workers). A child that exited during the run takes its ticks with it: backends of a
    pool and nginx workers live as long as the run."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total


def postmaster_pid(data_dir: str) -> int:
    return int((Path(data_dir) / "postmaster.pid").read_text().split()[0])


async def _pg_counters(dsn: str) -> tuple[int, int]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS next_xid,"
            " (SELECT xact_commit + xact_rollback FROM pg_stat_database"
            "  WHERE datname = current_database()) AS xacts"
        )
    finally:
        await conn.close()
    return int(row["next_xid"]), int(row["xacts"])


def _redis_calls(port: int) -> dict[str, int]:
    done = subprocess.run(
        ["redis-cli", "-p", str(port), "INFO", "commandstats"],
        capture_output=True,
        text=True,
        check=True,
    )
    calls: dict[str, int] = {}
    for line in done.stdout.splitlines():
        name, _, stats = line.strip().partition(":")
        if not name.startswith("cmdstat_") or name == "cmdstat_info":
            continue
        fields = dict(item.split("=", 1) for item in stats.split(","))
        calls[name.removeprefix("cmdstat_")] = int(fields["calls"])
    return calls


# What a client sends to run a script: one round trip each, whatever the script runs.
_SCRIPT_CALLS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro")


@dataclass(frozen=True)
class EngineSnapshot:
    """PostgreSQL's, Redis's and the front's counters at one moment."""

    pg_ticks: int
    next_xid: int
    xacts: int
    redis_ticks: int
    redis_calls: dict[str, int]
    front_ticks: int

    @classmethod
    def take(cls, postgres: Any, redis: Any, dsn: str, front_pid: int | None) -> EngineSnapshot:
        # CPU first: the probe's own backend has exited by the next snapshot's reading.
        pg_ticks = tree_ticks(postmaster_pid(postgres.data))
        redis_ticks = tree_ticks(redis.pid)
        front_ticks = tree_ticks(front_pid) if front_pid else 0
        next_xid, xacts = asyncio.run(_pg_counters(dsn))
        return cls(pg_ticks, next_xid, xacts, redis_ticks, _redis_calls(redis.port), front_ticks)

    def per_request(self, before: EngineSnapshot, requests: int) -> dict[str, Any]:
        if requests <= 0:
            return {}
        calls = {
            name: count - before.redis_calls.get(name, 0)
            for name, count in self.redis_calls.items()
            if count > before.redis_calls.get(name, 0)
        }

        def us(ticks: int) -> float:
            return 1e6 * ticks / CLOCK_TICKS / requests

        return {
            "pg_cpu_us_per_request": us(self.pg_ticks - before.pg_ticks),
            "redis_cpu_us_per_request": us(self.redis_ticks - before.redis_ticks),
            "front_cpu_us_per_request": us(self.front_ticks - before.front_ticks)
            if self.front_ticks
            else None,
            # The probe's own read-only transaction is one of the xacts counted.
            "pg_xacts_per_request": (self.xacts - before.xacts - 1) / requests,
            "pg_write_xacts_per_request": (self.next_xid - before.next_xid) / requests,
            "redis_calls_per_request": sum(calls.values()) / requests,
            "redis_scripts_per_request": sum(calls.get(name, 0) for name in _SCRIPT_CALLS)
            / requests,
            "redis_calls": calls,
        }


def print_engine_table(rows: list[dict[str, Any]]) -> None:
    """Per request, the cluster targets: CPU of relay, PostgreSQL, Redis, nginx; the
    round trips' evidence (transactions, Redis calls)."""
    measured = [r for r in rows if "pg_cpu_us_per_request" in r]
    if not measured:
        return
    print("\ncluster mode, per request (CPU in us; PostgreSQL and Redis are not pinned)")
    header = (
        f"{'target':17} {'shape':15} {'inst':>4} {'req/s':>6} {'relay':>6} {'PG':>6} "
        f"{'Redis':>6} {'nginx':>6} {'total':>6} {'PG xact':>7} {'PG wr':>6} {'scripts':>7} "
        f"{'R cmds':>6}"
    )
    print(header)
    print("-" * len(header))
    for row in measured:
        parts = (
            row.get("cpu_us_per_request"),
            row["pg_cpu_us_per_request"],
            row["redis_cpu_us_per_request"],
            row.get("front_cpu_us_per_request"),
        )
        total = sum(part for part in parts if part is not None)
        cells = " ".join(_cell(part, 6, 0) for part in parts)
        print(
            f"{row['target']:17} {row['shape']:15} {row.get('instances', 1):4d} "
            f"{row['rps']:6.0f} {cells} {total:6.0f} {row['pg_xacts_per_request']:7.2f} "
            f"{row['pg_write_xacts_per_request']:6.2f} {row['redis_scripts_per_request']:7.2f} "
            f"{row['redis_calls_per_request']:6.2f}"
        )
    print(
        "relay: all its instances' CPU; total: relay + PG + Redis + nginx. PG xact: transactions "
        "of the bench\ndatabase (pg_stat_database, reported by backends within ~1 s); PG wr: "
        "write transactions (xid counter,\nexact); scripts: Redis script calls (round trips); "
        "R cmds: Redis commands run, those inside\nscripts included (INFO commandstats)."
    )


def _cell(value: float | None, width: int, decimals: int) -> str:
    return " " * width if value is None else f"{value:{width}.{decimals}f}"
