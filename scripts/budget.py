#!/usr/bin/env python3
"""relay's per-request cost budget (issue 19): where each request's CPU microseconds go.

Starts the mock (CPU 1) and relay (CPU 0) as ``scripts/bench`` does, enrols the same funded
key, warms up, then loads one shape with wrk while py-spy samples relay (all threads) and
/proc measures relay's CPU time. Every sample is put in one step of the hot path (STEPS:
the innermost frame that matches a step's pattern names it), and each step's share of the
samples times the measured CPU per request gives its microseconds per request.

    .venv/bin/python scripts/budget.py --shape "nonstream c=32" --duration 10
    .venv/bin/python scripts/budget.py --shape "nonstream c=1" --server uvicorn
    .venv/bin/python scripts/budget.py --from-raw profile.txt --us-per-request 560

py-spy is not a project dependency: ``.venv/bin/pip install py-spy``. The run is bounded:
one warmup (2 s) and one measured shape (at most 30 s).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent

# (step, pattern on "function (path:line)"). A sample belongs to the step of its innermost
# frame that matches a pattern, so a library called from a relay step (msgspec, sqlite3,
# json...) counts toward that step. asyncio and uvloop frames count toward whatever runs
# them; only a sample with nothing else on its stack is the event loop's own.
STEPS: tuple[tuple[str, str], ...] = (
    ("auth and key cache", r"relay/identity/"),
    ("limits and gate", r"relay/admission/(limits|gate|admitter)\.py|relay/cluster/redis"),
    ("settle", r"^[\w.<>]*settle\w* \(|relay/money/ledger"),
    ("wallet hold", r"relay/money/(wallet|exposure|budget)\.py|relay/admission/ticket"),
    ("pricing (quote and cost)", r"relay/money/(pricing|estimate|audio_estimate)\.py|fractions"),
    ("routing and key pool", r"relay/upstream/(routing|keypool|health)\.py"),
    ("request build (provider adapter)", r"relay/upstream/(providers/|wire_|relay_fields)"),
    ("answer, metadata and stream tap", r"relay/upstream/stream_|relay/http/(sse|responses)"),
    ("upstream client (aiohttp)", r"relay/upstream/client\.py|aiohttp/|yarl/|multidict/"),
    ("usage record (queueing, main thread)", r"relay/usage/|relay/storage/"),
    ("metrics and traces", r"relay/metrics/"),
    ("request handler (api, flow, body)", r"relay/api/|relay/http/|relay/admission/exchange"),
    ("relay other (app, state, middleware)", r"relay/"),
    ("Starlette", r"starlette/"),
    ("server (hypercorn + h11)", r"hypercorn/|h11/|wsproto/"),
    ("server (uvicorn + httptools)", r"uvicorn/|httptools/"),
)
LOOP = "event loop (uvloop C, asyncio)"
WRITER = "usage record: SQLite writer thread"
READERS = "SQLite reader threads (aiosqlite)"
IDLE = "idle"
_OUTER = re.compile(r"relay/(server|cli/)")
_COMPILED = tuple((step, re.compile(pattern)) for step, pattern in STEPS)
# A worker thread waiting for work (py-spy does not always see the wait as idle).
_IDLE_LEAVES = re.compile(
    r"^_worker \(concurrent/futures/thread\.py:\d+\)$|"
    r"^_connection_worker_thread \(aiosqlite/core\.py:\d+\)$"
)


def step_of(frames: list[str]) -> str:
    """The step of one sample: frames are root first (the thread first), as py-spy's raw
    format with ``--threads`` has them."""
    if _IDLE_LEAVES.match(frames[-1]):
        return IDLE
    if "relay-db-writer" in frames[0] or "relay-db-background" in frames[0]:
        return WRITER
    if "_connection_worker_thread" in frames[0]:
        return READERS
    for frame in reversed(frames):
        if _OUTER.search(frame):  # what runs the loop, not a step of a request
            continue
        for step, pattern in _COMPILED:
            if pattern.search(frame):
                return step
    return LOOP


def read_raw(path: Path) -> Counter[str]:
    """Samples per step from py-spy's ``--format raw`` (collapsed stacks with a count)."""
    steps: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            steps[step_of(stack.split(";"))] += int(count)
    return steps


def budget_table(steps: Counter[str], us_per_request: float, writer_us: float | None = None) -> str:
    """Each step's share and µs per request. With ``writer_us`` (the writer thread's CPU
    per request from /proc), the writer's row is that figure and the loop's steps share
    the rest by their samples; otherwise every step is its share of the samples."""
    steps = Counter({step: n for step, n in steps.items() if step != IDLE})
    total = sum(steps.values()) or 1
    loop_samples = (total - steps[WRITER]) or 1
    rows = ["| step | share | µs/request |", "|---|---:|---:|"]
    for step, count in steps.most_common():
        if writer_us is None:
            us = count / total * us_per_request
        elif step == WRITER:
            us = writer_us
        else:
            us = count / loop_samples * (us_per_request - writer_us)
        rows.append(f"| {step} | {100 * us / us_per_request:.1f}% | {us:.0f} |")
    rows.append(f"| **total** ({total} samples) | 100% | **{us_per_request:.0f}** |")
    return "\n".join(rows)


def load_bench() -> ModuleType:
    """scripts/bench as a module: the same targets, mock, enrolment, wrk and CPU snapshots."""
    loader = importlib.machinery.SourceFileLoader("relay_bench", str(ROOT / "scripts" / "bench"))
    spec = importlib.util.spec_from_loader("relay_bench", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["relay_bench"] = module
    loader.exec_module(module)
    return module


def profile(args: argparse.Namespace) -> tuple[Counter[str], float, dict[str, object]]:
    bench_mod = load_bench()
    held = args.shape == bench_mod.HELD.name
    shapes = {s.name: s for s in bench_mod.SHAPES}
    # The held shape: 1,000 connections on the slow mock, started over its latency.
    shapes[bench_mod.HELD.name] = replace(bench_mod.HELD, stagger_ms=bench_mod.HELD_LATENCY_MS)
    shape = shapes[args.shape]
    mock_port = bench_mod.HELD_MOCK_PORT if held else bench_mod.MOCK_PORT
    target = next(t for t in bench_mod.TARGETS if t.name == args.target)
    py_spy = shutil.which("py-spy", path=str(ROOT / ".venv" / "bin")) or shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("budget: py-spy is missing: .venv/bin/pip install py-spy")
    bench_mod.raise_open_files_limit()
    with tempfile.TemporaryDirectory(prefix="relay-budget-") as workdir:
        bench_args = bench_mod.build_parser().parse_args(["--duration", str(args.duration)])
        bench_args.relay_cmd = ""
        python = str(ROOT / ".venv" / "bin" / "python")
        bench = bench_mod.Bench(bench_args, Path(workdir), python, pin=True)
        mock = [
            python,
            str(ROOT / "scripts" / "mock_upstream.py"),
            "--port",
            str(mock_port),
            *(["--latency-ms", str(bench_mod.HELD_LATENCY_MS)] if held else []),
        ]
        mock_pid = bench_mod.start_process(bench, "mock", bench.pinned(1, mock), {})
        try:
            bench_mod.wait_healthy(bench, "mock", mock_port, mock_pid)
            target, started = bench_mod.start_run(
                bench, target, bench_mod.Run(target.name, mock_port, held=held)
            )
            pid = started.pids[0]  # relay is one process
            warmup = (shape, bench_mod.HELD_WARMUP_S) if held else (bench_mod.WARMUP, 2)
            bench_mod.run_wrk(bench, args.wrk, target, *warmup)
            raw_path = Path(args.raw_out)
            spy = subprocess.Popen(
                bench.pinned(
                    1,
                    [
                        py_spy,
                        "record",
                        "--pid",
                        str(pid),
                        "--rate",
                        str(args.rate),
                        "--duration",
                        str(args.duration),
                        "--nonblocking",
                        "--threads",
                        "--format",
                        "raw",
                        "-o",
                        str(raw_path),
                    ],
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.3)
            threads_before = thread_ticks(pid)
            row = bench_mod.measure(bench, args.wrk, target, shape, started)
            threads_after = thread_ticks(pid)
            spy.wait(timeout=args.duration + 30)
        finally:
            for process in bench.processes:
                bench_mod.stop_process(bench, process.pid)
    figures = {
        k: row.get(k)
        for k in (
            "rps",
            "p50_ms",
            "p99_ms",
            "cpu_us_per_request",
            "others_on_cpu_pct",
            "errors",
            "requests",
        )
    }
    # py-spy counts a thread that is runnable but waiting for the core as busy, which
    # overstates a lower-priority writer; /proc says what each thread really ran.
    writers = writer_thread_ids(raw_path)
    writer_ticks = sum(threads_after.get(tid, 0) - threads_before.get(tid, 0) for tid in writers)
    if writers and row["requests"]:
        figures["writer_thread_cpu_us_per_request"] = round(
            1e6 * writer_ticks / bench_mod.CLOCK_TICKS / row["requests"]
        )
    return read_raw(raw_path), float(row["cpu_us_per_request"]), figures


def thread_ticks(pid: int) -> dict[int, int]:
    """utime + stime of each of the process's threads, by native thread id."""
    ticks: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # the thread ended meanwhile
            continue
        ticks[int(task.name)] = int(fields[11]) + int(fields[12])
    return ticks


def writer_thread_ids(raw_path: Path) -> set[int]:
    """The writer's native thread ids, as py-spy's ``--threads`` names them."""
    found = re.findall(
        r"^thread \((\d+)\): relay-db-(?:writer|background)", raw_path.read_text(), re.M
    )
    return {int(tid) for tid in found}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="nonstream c=32", help='or "held c=1000"')
    parser.add_argument("--target", default="relay", help="relay or relay-uvicorn")
    parser.add_argument("--duration", type=int, default=10, help="seconds (1-30)")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--raw-out", default=str(ROOT / "bench-results" / "budget-raw.txt"))
    parser.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    parser.add_argument("--from-raw", help="only aggregate an existing py-spy raw file")
    parser.add_argument("--us-per-request", type=float, help="with --from-raw")
    parser.add_argument(
        "--writer-us", type=float, help="with --from-raw: the writer thread's µs (from /proc)"
    )
    args = parser.parse_args()
    if args.from_raw:
        if args.us_per_request is None:
            raise SystemExit("budget: --from-raw needs --us-per-request")
        steps = read_raw(Path(args.from_raw))
        print(budget_table(steps, args.us_per_request, args.writer_us))
        return 0
    if not 1 <= args.duration <= 30:
        raise SystemExit("budget: --duration must be 1-30 s")
    Path(args.raw_out).parent.mkdir(parents=True, exist_ok=True)
    steps, us, figures = profile(args)
    print(json.dumps(figures))
    writer = figures.get("writer_thread_cpu_us_per_request")
    print(budget_table(steps, us, float(writer) if isinstance(writer, int) else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
