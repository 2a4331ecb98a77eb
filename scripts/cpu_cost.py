#!/usr/bin/env python3
"""relay's own cost per request, for comparing code versions side by side (issue 19).

Starts scripts/mock_upstream.py and one relay (all features on: a funded key with limits,
as scripts/bench enrols it), sends a fixed number of chat completions one at a time
(non-stream, then stream), and reports relay's cost per request:

- ``cpu``: utime + stime of the relay process (all threads) over the requests, /proc;
- ``--callgrind``: instructions executed (valgrind's Ir) over the requests: counted, so
  independent of what else the shared box runs, unlike CPU time. relay runs under valgrind
  with instrumentation off until warmed up; the count covers only the measured requests.

Each ``--tree`` is a directory holding a ``relay`` package (``git archive COMMIT relay``):
the versions are run one after the other, ``--rounds`` times interleaved. ``--tree
passthrough`` measures scripts/passthrough.py (the bare hypercorn + Starlette + aiohttp
stack, no features) the same way, the ceiling issue 19 compares relay with. ``--concurrency
N`` keeps N requests in flight (N client connections) instead of one, for the costs that
only show under concurrency (timers, the GC, per-stream work). Bounded: each
relay is stopped after its requests, and the whole run refuses to go past ``--budget-s``.

    scripts/cpu_cost.py --tree /tmp/base --tree /tmp/new --requests 2000 --rounds 3
    scripts/cpu_cost.py --tree /tmp/base --tree /tmp/new --requests 200 --callgrind
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def _free_ports(count: int) -> list[int]:
    """Distinct ports nothing listens on now: several runs (helpers, CI) may share one box."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind((HOST, 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


MOCK_PORT, RELAY_PORT = _free_ports(2)
ADMIN_TOKEN = "cpu-cost-admin-token-0123456789"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BODY = {
    "model": "bench-model",
    "messages": [
        {"role": "system", "content": "You are a concise assistant for a benchmark."},
        {"role": "user", "content": "Explain why a gateway should add little latency."},
    ],
    "max_tokens": 64,
    "temperature": 0.2,
}
STREAM_BODY = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
CONFIG = """[server]
listen = "{host}:{port}"
database = "{database}"

[[providers]]
name = "up"
kind = "openai"
base_url = "http://{host}:{mock_port}/v1"
api_keys = ["sk-bench"]
max_connections = 1024

[[models]]
name = "bench-model"
routes = ["up:bench-model"]
input_usd_per_mtok = "0.15"
output_usd_per_mtok = "0.60"
"""


def _wait_for(port: int, path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"nothing answered on {port}{path} within {timeout_s} s")


def _cli(python: str, env: dict[str, str], config: Path, arguments: list[str]) -> dict[str, object]:
    command = [python, "-m", "relay.cli", *arguments, "--json", "-c", str(config)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"relay {arguments[:2]} failed: {done.stderr[-400:]}")
    result: dict[str, object] = json.loads(done.stdout)
    return result


def _enroll(python: str, env: dict[str, str], config: Path) -> str:
    created = _cli(
        python,
        env,
        config,
        "account create bench --credit 1000 --key bench --concurrency 2000 --rpm 0 --tpm 0".split(),
    )
    key = created["key"]
    assert isinstance(key, dict)
    _cli(
        python,
        env,
        config,
        f"key update {key['id']} --concurrency 2000 --rpm 1000000 --tpm 1000000000 "
        "--spend-cap 900".split(),
    )
    return str(key["secret"])


def _send(conn: http.client.HTTPConnection, secret: str, body: bytes, stream: bool) -> None:
    headers = {"authorization": f"Bearer {secret}", "content-type": "application/json"}
    conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    if response.status != 200 or (secret != "-" and b'"metadata"' not in data):
        raise RuntimeError(f"bad answer {response.status}: {data[:300]!r}")
    if stream and not data.endswith(b"data: [DONE]\n\n"):
        raise RuntimeError("a stream without [DONE]")


def _send_many(secret: str, body: bytes, stream: bool, count: int, concurrency: int) -> None:
    """``count`` requests over ``concurrency`` connections, each sending its share in turn."""

    def one_connection(share: int) -> None:
        conn = http.client.HTTPConnection(HOST, RELAY_PORT, timeout=300)
        try:
            for _ in range(share):
                _send(conn, secret, body, stream)
        finally:
            conn.close()

    shares = [count // concurrency + (i < count % concurrency) for i in range(concurrency)]
    with ThreadPoolExecutor(concurrency) as pool:
        for done in [pool.submit(one_connection, share) for share in shares if share]:
            done.result()


def _ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def _callgrind(pid: int, *options: str) -> None:
    subprocess.run(["callgrind_control", *options, str(pid)], check=True, capture_output=True)


def _events(out: Path, before: set[Path]) -> dict[str, int]:
    """The event totals (Ir, and with ``--cache-sim`` the cache misses) of the newest dump."""
    dumps = sorted(set(out.parent.glob(out.name + "*")) - before, key=lambda p: p.stat().st_mtime)
    names: list[str] = []
    for line in dumps[-1].read_text(errors="replace").splitlines():
        if line.startswith("events:"):
            names = line.split()[1:]
        if line.startswith(("summary:", "totals:")):
            return dict(zip(names, map(int, line.split()[1:]), strict=False))
    raise RuntimeError(f"no totals in {dumps[-1]}")


def _py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    venv_spy = Path(sys.executable).parent / "py-spy"
    spy_bin = str(venv_spy) if venv_spy.exists() else "py-spy"
    command = [spy_bin, "record", "--pid", str(pid), "--rate", "250", "--nonblocking"]
    command += ["--threads", "--format", "raw", "-o", str(out)]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the first measured request
    return spy


def measure(
    tree: Path,
    requests: int,
    callgrind: bool,
    work: Path,
    profile: Path | None = None,
    concurrency: int = 1,
    cache_sim: bool = False,
) -> dict[str, float]:
    """One relay from ``tree``: its cost per request, non-stream then stream."""
    database = work / f"relay-{time.monotonic_ns()}.db"
    config = work / "relay.toml"
    text = CONFIG.format(host=HOST, port=RELAY_PORT, mock_port=MOCK_PORT, database=database)
    if callgrind:
        # Under valgrind everything runs ~50x slower and its threads take turns coarsely:
        # the 2 s a real writer may lag before the gate fails closed is ~40 ms of real work.
        text = text.replace("[server]\n", "[server]\nstorage_stall_s = 120\n", 1)
    config.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(tree), "RELAY_ADMIN_TOKEN": ADMIN_TOKEN}
    python = sys.executable
    bare = str(tree) == "passthrough"
    command = (
        [python, str(ROOT / "scripts" / "passthrough.py"), "--port", str(RELAY_PORT)]
        + ["--upstream", f"http://{HOST}:{MOCK_PORT}/v1", "--client", "aiohttp"]
        if bare
        else [python, "-m", "relay.cli", "serve", "-c", str(config)]
    )
    out = work / "callgrind.out"
    if callgrind:
        # The system allocator for valgrind; a fixed hash seed so that runs count alike.
        env.update(PYTHONMALLOC="malloc", PYTHONHASHSEED="0")
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            *(["--cache-sim=yes"] if cache_sim else []),
            f"--callgrind-out-file={out}.%p",
            *command,
        ]
    relay = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work
    )
    try:
        _wait_for(RELAY_PORT, "/healthz", 240 if callgrind else 30)
        secret = "-" if bare else _enroll(python, env, config)
        results: dict[str, float] = {}
        for shape, body, stream in (
            ("nonstream", BODY, False),
            ("stream", STREAM_BODY, True),
        ):
            encoded = json.dumps(body).encode()
            if callgrind:
                _callgrind(relay.pid, "-i", "on")
            # warm: pools, caches, code paths
            _send_many(secret, encoded, stream, max(20, requests // 10), concurrency)
            if callgrind:
                _callgrind(relay.pid, "-z")
                before = set(work.glob(out.name + "*"))
            spy = None if profile is None else _py_spy(relay.pid, profile / f"{shape}.txt")
            ticks = _ticks(relay.pid)
            _send_many(secret, encoded, stream, requests, concurrency)
            used = _ticks(relay.pid) - ticks
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its samples and exits
                spy.wait(60)
            results[f"{shape}_cpu_us"] = 1e6 * used / CLOCK_TICKS / requests
            if callgrind:
                _callgrind(relay.pid, "-d")
                time.sleep(0.5)
                events = _events(out, before)
                results[f"{shape}_ir"] = events["Ir"] / requests
                if cache_sim:  # misses in the first level and the last level, per request
                    l1 = events["I1mr"] + events["D1mr"] + events["D1mw"]
                    ll = events["ILmr"] + events["DLmr"] + events["DLmw"]
                    results[f"{shape}_l1_misses"] = l1 / requests
                    results[f"{shape}_ll_misses"] = ll / requests
                _callgrind(relay.pid, "-i", "off")
        return results
    finally:
        relay.send_signal(signal.SIGTERM)
        try:
            relay.wait(30)
        except subprocess.TimeoutExpired:
            relay.kill()
            relay.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, type=Path)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    parser.add_argument(
        "--chunk-delay-ms",
        type=float,
        default=0.0,
        help="the mock's pause between a stream's chunks: relay then reads each on its own",
    )
    parser.add_argument(
        "--cache-sim", action="store_true", help="with --callgrind: count cache misses too"
    )
    parser.add_argument("--budget-s", type=float, default=600.0)
    parser.add_argument(
        "--keep", type=Path, help="copy callgrind's dumps here (for callgrind_annotate)"
    )
    parser.add_argument(
        "--py-spy", type=Path, help="record py-spy's samples of the measured requests here"
    )
    args = parser.parse_args()
    if args.callgrind and shutil.which("callgrind_control") is None:
        parser.error("valgrind is not installed")
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="relay-cpu-cost-"))
    mock = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "mock_upstream.py"), "--port", str(MOCK_PORT)]
        + ["--chunk-delay-ms", str(args.chunk_delay_ms)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rows: dict[str, list[dict[str, float]]] = {str(tree): [] for tree in args.tree}
    try:
        _wait_for(MOCK_PORT, "/_stats", 30)
        for round_ in range(args.rounds):
            for tree in args.tree:
                if time.monotonic() - started > args.budget_s:
                    print(f"budget of {args.budget_s} s spent: stopping", file=sys.stderr)
                    break
                if args.py_spy is not None:
                    args.py_spy.mkdir(parents=True, exist_ok=True)
                result = measure(
                    tree,
                    args.requests,
                    args.callgrind,
                    work,
                    args.py_spy,
                    args.concurrency,
                    args.cache_sim,
                )
                rows[str(tree)].append(result)
                print(f"round {round_ + 1} {tree}: {json.dumps(result)}", flush=True)
    finally:
        mock.terminate()
        mock.wait(10)
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            for dump in work.glob("callgrind.out.*"):
                shutil.copy2(dump, args.keep / dump.name)
        shutil.rmtree(work, ignore_errors=True)
    print("\nbest of rounds (lowest):")
    for tree, results in rows.items():
        if results:
            best = {k: min(r[k] for r in results) for k in results[0]}
            print(f"{tree}: " + ", ".join(f"{k}={v:,.0f}" for k, v in best.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
