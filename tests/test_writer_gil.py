"""The usage writer keeps up with a busy event loop on another core.

Python's sqlite3 gives up the GIL for every statement step and must take it back after;
while another thread keeps the GIL busy, each taking back waits out the switch interval
(5 ms). Row-by-row inserts then capped the writer at a few hundred rows a second on a
machine with two or more cores, and a saturated relay refused work with "the database
could not commit" (503) within two seconds of load. A batch of usage writes is now a
few multi-row statements (``relay.storage.multirow``), whatever its size.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ADMIN_TOKEN

from relay.money.ledger import insert_entry
from relay.money.records import LedgerEntry
from relay.storage.batch import open_writer_connection, run_batch
from relay.storage.migrations import apply_migrations
from relay.storage.multirow import insert_rows
from relay.usage.log import UsageRecord, UsageWrite, insert_usage

ROOT = Path(__file__).resolve().parent.parent


def _write(n: int, *, charged: bool = True) -> UsageWrite:
    record = UsageRecord(
        request_id=f"req-{n}",
        ts_ms=1_765_000_000_000 + n * 1_000,
        endpoint="chat",
        status=200 if n % 7 else 502,
        account_id=f"acct-{n % 3}",
        key_id=f"key-{n % 5}",
        model=f"model-{n % 2}",
        provider="up",
        stream=bool(n % 2),
        prompt_tokens=n,
        completion_tokens=2 * n,
        cost_micros=3 * n,
        usage_estimated=n % 11 == 0,
        latency_ms=None if n % 4 else n,
    )
    charge = LedgerEntry(
        account_id=f"acct-{n % 3}",
        kind="charge",
        amount_micros=-3 * n,
        reference=f"charge:req-{n}",
        key_id=f"key-{n % 5}",
        request_id=f"req-{n}",
        note=None if n % 2 else "a note",
        created_at_ms=1_765_000_000_000 + n,
    )
    return UsageWrite(record, charge if charged and n % 13 else None)


def _database(path: Path) -> sqlite3.Connection:
    conn = open_writer_connection(path)
    apply_migrations(conn)
    for account in range(3):
        conn.execute(
            "INSERT INTO accounts (id, name, mode, created_at_ms, updated_at_ms) "
            "VALUES (?, ?, 'prepaid', 0, 0)",
            (f"acct-{account}", f"account {account}"),
        )
    return conn


def _tables(conn: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: [tuple(row) for row in conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3")]
        for table in ("ledger", "usage", "usage_daily")
    }


def test_a_batch_of_usage_writes_is_a_few_statements_and_the_same_rows(tmp_path: Path) -> None:
    writes = [_write(n) for n in range(1, 301)]
    batched = _database(tmp_path / "batched.db")
    statements: list[str] = []
    batched.set_trace_callback(statements.append)
    outcomes = run_batch(batched, list(writes), replayable=True)
    batched.set_trace_callback(None)
    assert all(outcome.error is None for outcome in outcomes)
    # 300 rows = 256 + 32 + 8 + 4 for usage; the 277 charges = 256 + 16 + 4 + 1; the
    # 6 daily counts (3 accounts x 2 models, one day) = 4 + 2; BEGIN and COMMIT.
    inserts = [sql for sql in statements if sql.startswith("INSERT")]
    assert [sql.split(" (")[0] for sql in inserts] == (
        ["INSERT INTO ledger"] * 4 + ["INSERT INTO usage"] * 4 + ["INSERT INTO usage_daily"] * 2
    )
    assert len(statements) == len(inserts) + 2

    # The very rows (ids included) that inserting each write on its own gives.
    one_by_one = _database(tmp_path / "one_by_one.db")
    one_by_one.execute("BEGIN")
    for write in writes:
        if write.charge is not None:
            insert_entry(one_by_one, write.charge)
    for write in writes:
        insert_usage(one_by_one, write.record)
    one_by_one.execute("COMMIT")
    assert _tables(batched) == _tables(one_by_one)
    assert len(_tables(batched)["usage"]) == 300


def test_a_failing_write_in_a_big_batch_fails_alone(tmp_path: Path) -> None:
    conn = _database(tmp_path / "relay.db")
    insert_usage(conn, _write(150).record)  # its request id is taken: that write must fail
    writes = [_write(n) for n in range(1, 301)]
    outcomes = run_batch(conn, list(writes), replayable=True)
    failed = [n for n, outcome in enumerate(outcomes, start=1) if outcome.error is not None]
    assert failed == [150]
    assert conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0] == 300
    # The failed write's charge went with it (same savepoint): 277 charges less its own.
    assert conn.execute("SELECT COUNT(*) FROM ledger").fetchone()[0] == 276


@pytest.mark.parametrize("count", [1, 2, 3, 255, 256, 257, 600])
def test_insert_rows_inserts_every_row_in_order(count: int) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (n INTEGER, s TEXT)")
    insert_rows(conn, "INSERT INTO t (n, s)", [(n, f"row {n}") for n in range(count)])
    assert conn.execute("SELECT n, s FROM t ORDER BY rowid").fetchall() == [
        (n, f"row {n}") for n in range(count)
    ]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the GIL convoy needs two cores")
def test_the_writer_keeps_up_while_another_thread_keeps_the_gil_busy(tmp_path: Path) -> None:
    conn = _database(tmp_path / "relay.db")
    stop = threading.Event()

    def busy_loop() -> None:  # an event loop with always something to run
        spins = 0
        while not stop.is_set():
            spins += 1

    busy = threading.Thread(target=busy_loop)
    busy.start()
    try:
        started = time.monotonic()
        for batch in range(4):
            writes = [_write(n) for n in range(1 + 400 * batch, 401 + 400 * batch)]
            assert all(o.error is None for o in run_batch(conn, list(writes), replayable=True))
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        busy.join()
    assert conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0] == 1_600
    # Row by row, each of ~3,000 statement steps waited out the 5 ms switch interval
    # (about 15 s here); a dozen statements per batch take well under a second.
    assert elapsed < 3.0, f"1,600 usage writes took {elapsed:.1f} s next to a busy thread"


# ------------------------------------------------------------------- a real relay, saturated


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited at start-up with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer")


def _started(
    command: list[str], folder: Path, name: str, *, cpu: int | None = None
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RELAY_ADMIN_TOKEN": ADMIN_TOKEN}

    def pin() -> None:  # in the child, before relay starts any thread
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    with (folder / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=log, cwd=folder, env=env, preexec_fn=pin
        )


@pytest.fixture
def saturated_site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A relay and the mock upstream, each a process; relay pinned to one core when the
    test is marked ``pinned`` (and the mock kept off that core)."""
    cpu = None
    if request.node.get_closest_marker("pinned") is not None:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            pytest.skip("pinning relay to a core of its own needs two cores")
        cpu = cpus[0]
    mock_port, relay_port = _free_port(), _free_port()
    mock = _started(
        [sys.executable, str(ROOT / "scripts" / "mock_upstream.py"), "--port", str(mock_port)],
        tmp_path,
        "mock",
        cpu=None if cpu is None else max(os.sched_getaffinity(0)),
    )
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{relay_port}"\ndatabase = "relay.db"\n\n'
        f'[[providers]]\nname = "up"\nkind = "openai"\n'
        f'base_url = "http://127.0.0.1:{mock_port}/v1"\napi_keys = ["sk-up"]\n\n'
        '[[models]]\nname = "m"\nroutes = ["up:m"]\n'
        'input_usd_per_mtok = "0.15"\noutput_usd_per_mtok = "0.60"\n'
    )
    relay = _started(
        [sys.executable, "-m", "relay.cli", "serve", "-c", str(config)],
        tmp_path,
        "relay",
        cpu=cpu,
    )
    try:
        _wait_ready(f"http://127.0.0.1:{mock_port}/_stats", mock)
        _wait_ready(f"http://127.0.0.1:{relay_port}/healthz", relay)
        yield relay_port, tmp_path
    finally:
        for process in (relay, mock):
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _funded_key(port: int) -> tuple[str, str]:
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=admin) as client:
        account = client.post("/admin/accounts", json={"name": "load"}).json()["id"]
        credit = {"amount_usd": "100", "reference": "seed"}
        assert client.post(f"/admin/accounts/{account}/credits", json=credit).status_code == 201
        key = client.post(f"/admin/accounts/{account}/keys", json={"name": "k"}).json()
        return account, key["secret"]


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_saturated_relay_records_every_request_it_answers(
    saturated_site: tuple[int, Path],
) -> None:
    port, folder = saturated_site
    _, secret = _funded_key(port)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"authorization": f"Bearer {secret}", "content-type": "application/json"}

    def one_connection(count: int) -> list[int]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        statuses = []
        try:
            for _ in range(count):
                conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                statuses.append(response.status)
        finally:
            conn.close()
        return statuses

    # 8 connections keep relay's loop busy for several seconds: before the multi-row
    # writes, this box's relay answered 503 storage_unavailable about 2 s in.
    with ThreadPoolExecutor(8) as pool:
        statuses = [s for done in pool.map(one_connection, [600] * 8) for s in done]
    assert statuses.count(200) == len(statuses) == 4_800, {s: statuses.count(s) for s in statuses}

    deadline = time.monotonic() + 10
    with sqlite3.connect(folder / "relay.db") as conn:
        while True:
            rows = conn.execute("SELECT COUNT(*) FROM usage WHERE endpoint = 'chat'").fetchone()[0]
            charges = conn.execute("SELECT COUNT(*) FROM ledger WHERE kind = 'charge'").fetchone()
            if (rows, charges[0]) == (4_800, 4_800) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert (rows, charges[0]) == (4_800, 4_800)


def _recorded(folder: Path) -> tuple[int, int]:
    """Answered chat requests recorded: their usage rows, and how many have their charge."""
    with sqlite3.connect(folder / "relay.db") as conn:
        rows, charged = conn.execute(
            "SELECT COUNT(*), COUNT(ledger.id) FROM usage LEFT JOIN ledger "
            "ON ledger.request_id = usage.request_id AND ledger.kind = 'charge' "
            "WHERE usage.endpoint = 'chat' AND usage.status = 200"
        ).fetchone()
    return rows, charged


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.pinned
@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (.ci/run installs it)")
def test_a_relay_saturating_its_one_core_keeps_recording(
    saturated_site: tuple[int, Path],
) -> None:
    """Routine flushes run on a thread at nice 19, which a saturated core starves: the
    writer's own thread must take over the backlog (relay.storage.writer
    ``_executor_for``). Without that, this run answered thousands of 503s."""
    port, folder = saturated_site
    _, secret = _funded_key(port)
    body = folder / "body.json"
    body.write_text(json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
    env = {
        **os.environ,
        "BENCH_BODY_FILE": str(body),
        "BENCH_AUTH": secret,
        "BENCH_STREAM": "0",
        "BENCH_EXPECT": '"metadata":',
    }
    cpu = max(os.sched_getaffinity(0))  # wrk beside the mock, off relay's core
    command = ["wrk", "-t1", "-c32", "-d5s", "--timeout", "10s", "-s"]
    command += [str(ROOT / "scripts" / "bench_chat.lua"), f"http://127.0.0.1:{port}"]
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=60,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )  # fmt: skip
    line = next(x for x in done.stdout.splitlines() if x.startswith("BENCH_RESULT "))
    result = json.loads(line.removeprefix("BENCH_RESULT "))
    assert result["requests"] > 2_000, result  # enough to keep the core saturated
    assert (result["non2xx"], result["bad_body"]) == (0, 0), result
    # wrk counts the answers it read; one it cut at its end may be recorded too.
    deadline = time.monotonic() + 10
    while _recorded(folder)[0] < result["requests"] and time.monotonic() < deadline:
        time.sleep(0.1)
    rows, charged = _recorded(folder)
    assert rows == charged
    assert result["requests"] <= rows <= result["requests"] + 32
