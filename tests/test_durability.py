"""Durability: `relay serve` as a real process, stopped politely and killed.

What relay promises is in docs/architecture.md §4.

The server runs as a subprocess on an ephemeral 127.0.0.1 port against the fast mock
upstream (``scripts/mock_upstream.py``, served in this test's event loop), with funded
accounts and keys created through the admin API.

* SIGTERM under load: the process drains and exits 0 within its grace period, and every
  request that was answered 200 has its usage row and its charge.
* SIGKILL at random moments, 10 bounded rounds on one database: after every kill the file
  passes ``PRAGMA integrity_check``, nothing is charged twice, charges and billed usage
  rows come in pairs, every acknowledged top-up is there, and after every restart each
  account's balance (admin API) equals the sum of its ledger rows with nothing held.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ADMIN_TOKEN, mock_upstream

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

GRACE_S = 5.0
READY_TIMEOUT_S = 15.0
ROUNDS = 10
MODELS = """
[[providers]]
name = "fake"
kind = "openai"
base_url = "{upstream}"
api_keys = ["durability-upstream-key"]
timeout_s = 10

[[models]]
name = "fake-gpt"
routes = ["fake:gpt-4o-mini"]
input_usd_per_mtok = "0.15"
output_usd_per_mtok = "0.60"

[[models]]
name = "fake-embedding"
kind = "embedding"
routes = ["fake:text-embedding-3-small"]
input_usd_per_mtok = "0.02"
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RelayProcess:
    """One `relay serve` process; its stderr goes to ``log`` (appended across restarts)."""

    process: subprocess.Popen[bytes]
    base_url: str

    def client(self, timeout: float = 15.0) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=64)
        return httpx.AsyncClient(base_url=self.base_url, timeout=timeout, limits=limits)

    async def exit_code(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while (code := self.process.poll()) is None:
            if time.monotonic() > deadline:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"relay did not exit within {timeout_s} s")
            await asyncio.sleep(0.02)
        return code


@dataclass
class Site:
    """A config folder: the database, the config file and the server's stderr log."""

    folder: Path
    upstream_url: str
    processes: list[RelayProcess] = field(default_factory=list)

    @property
    def database(self) -> Path:
        return self.folder / "relay.db"

    @property
    def log(self) -> Path:
        return self.folder / "stderr.log"

    def write_config(self, port: int) -> Path:
        config = self.folder / "relay.toml"
        config.write_text(
            f'[server]\nlisten = "127.0.0.1:{port}"\ndatabase = "relay.db"\n'
            f"flush_interval_ms = 50\nshutdown_grace_s = {GRACE_S}\n"
            + MODELS.format(upstream=self.upstream_url)
        )
        return config

    async def start(self) -> RelayProcess:
        port = _free_port()
        config = self.write_config(port)
        env = {**os.environ, "RELAY_ADMIN_TOKEN": ADMIN_TOKEN}
        with self.log.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "relay.cli", "serve", "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.folder,
            )
        relay = RelayProcess(process, f"http://127.0.0.1:{port}")
        self.processes.append(relay)
        await _wait_until_ready(relay)
        return relay

    def stop_all(self) -> None:
        for relay in self.processes:
            if relay.process.poll() is None:
                relay.process.kill()
            relay.process.wait()


async def _wait_until_ready(relay: RelayProcess) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with relay.client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if relay.process.poll() is not None:
                raise AssertionError(f"relay exited at start-up with {relay.process.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.02)
    raise AssertionError("relay did not become ready")


@contextlib.asynccontextmanager
async def site_with_upstream(tmp_path: Path, options: Any) -> AsyncIterator[tuple[Site, Any]]:
    upstream = await mock_upstream.start(port=0, options=options)
    site = Site(tmp_path, f"http://127.0.0.1:{upstream.port}/v1")
    try:
        yield site, upstream
    finally:
        site.stop_all()
        await upstream.close()


# ------------------------------------------------------------------------------ admin API


def _admin_headers() -> dict[str, str]:
    return {"authorization": f"Bearer {ADMIN_TOKEN}"}


async def _funded_key(client: httpx.AsyncClient, name: str, usd: str) -> tuple[str, str]:
    """A new prepaid account credited ``usd`` and a key on it: (account id, key secret)."""
    headers = _admin_headers()
    account = await client.post("/admin/accounts", json={"name": name}, headers=headers)
    assert account.status_code == 201, account.text
    account_id = account.json()["id"]
    credit = {"amount_usd": usd, "reference": f"seed-{name}"}
    credited = await client.post(
        f"/admin/accounts/{account_id}/credits", json=credit, headers=headers
    )
    assert credited.status_code == 201, credited.text
    key = await client.post(
        f"/admin/accounts/{account_id}/keys", json={"name": "load"}, headers=headers
    )
    assert key.status_code == 201, key.text
    return account_id, key.json()["secret"]


async def _wallet(client: httpx.AsyncClient, account_id: str) -> dict[str, Any]:
    response = await client.get(f"/admin/accounts/{account_id}/wallet", headers=_admin_headers())
    assert response.status_code == 200, response.text
    wallet: dict[str, Any] = response.json()
    return wallet


# ------------------------------------------------------------------------------ the load


@dataclass
class Outcome:
    status: int
    request_id: str | None
    complete: bool  # the whole answer arrived (a stream up to its [DONE])


def _request_body(kind: str) -> tuple[str, dict[str, Any]]:
    if kind == "embedding":
        return "/v1/embeddings", {"model": "fake-embedding", "input": "durability"}
    body: dict[str, Any] = {
        "model": "fake-gpt",
        "messages": [{"role": "user", "content": "durability"}],
        "max_tokens": 64,
    }
    if kind == "stream":
        body["stream"] = True
    return "/v1/chat/completions", body


async def _one_request(client: httpx.AsyncClient, secret: str, kind: str) -> Outcome:
    path, body = _request_body(kind)
    headers = {"authorization": f"Bearer {secret}"}
    try:
        async with client.stream("POST", path, json=body, headers=headers) as response:
            content = await response.aread()
    except httpx.HTTPError:
        return Outcome(0, None, False)
    complete = content.rstrip().endswith(b"[DONE]") if kind == "stream" else bool(content)
    return Outcome(response.status_code, response.headers.get("x-relay-request-id"), complete)


# ------------------------------------------------------------------------------ the checks


@contextlib.contextmanager
def _read_database(path: Path) -> Iterator[sqlite3.Connection]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        yield conn


def _ledger_sums(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute("SELECT account_id, SUM(amount_micros) FROM ledger GROUP BY account_id")
    return {row[0]: int(row[1]) for row in rows}


def check_stored_invariants(path: Path, seed: int) -> None:
    """What must hold in the file whatever moment the process died at."""
    with _read_database(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", seed
        duplicate_usage = conn.execute(
            "SELECT request_id FROM usage GROUP BY request_id HAVING COUNT(*) > 1"
        ).fetchall()
        duplicate_charges = conn.execute(
            "SELECT reference FROM ledger WHERE kind = 'charge' "
            "GROUP BY reference HAVING COUNT(*) > 1"
        ).fetchall()
        assert (duplicate_usage, duplicate_charges) == ([], []), seed
        # A charge and its usage row are one transaction: never one without the other.
        unpaired_charges = conn.execute(
            "SELECT l.reference FROM ledger l WHERE l.kind = 'charge' AND NOT EXISTS "
            "(SELECT 1 FROM usage u WHERE u.request_id = l.request_id "
            " AND u.cost_micros = -l.amount_micros)"
        ).fetchall()
        unpaired_usage = conn.execute(
            "SELECT u.request_id FROM usage u WHERE u.cost_micros > 0 AND NOT EXISTS "
            "(SELECT 1 FROM ledger l WHERE l.kind = 'charge' AND l.request_id = u.request_id)"
        ).fetchall()
        assert ([tuple(r) for r in unpaired_charges], [tuple(r) for r in unpaired_usage]) == (
            [],
            [],
        ), seed
        negative = [
            account for account, total in _ledger_sums(conn).items() if total < 0
        ]  # prepaid accounts: credit limit 0
        assert negative == [], seed


async def check_live_wallets(relay: RelayProcess, path: Path, seed: int) -> None:
    """After a restart the in-memory wallets are exactly the ledger, with nothing held."""
    with _read_database(path) as conn:
        sums = _ledger_sums(conn)
    assert sums, "the accounts were funded"
    async with relay.client() as client:
        for account_id, total in sums.items():
            wallet = await _wallet(client, account_id)
            assert (wallet["balance_micros"], wallet["held_micros"]) == (total, 0), seed
            assert wallet["available_micros"] == total, seed


# ------------------------------------------------------------------------------ SIGTERM


async def test_sigterm_under_load_drains_every_answered_request(tmp_path: Path) -> None:
    options = mock_upstream.MockOptions(latency_ms=300, stream_chunks=10, chunk_delay_ms=20)
    async with site_with_upstream(tmp_path, options) as (site, upstream):
        relay = await site.start()
        async with relay.client() as client:
            account_id, secret = await _funded_key(client, "drain", "100")
            kinds = ["stream", "plain", "embedding", "stream", "plain"] * 10
            load = [asyncio.create_task(_one_request(client, secret, k)) for k in kinds]
            deadline = time.monotonic() + 5
            while upstream.stats.in_flight < len(kinds) and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            assert upstream.stats.in_flight == len(kinds), "all requests reached the upstream"
            relay.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            outcomes = await asyncio.gather(*load)
            code = await relay.exit_code(GRACE_S + 5)
            took = time.monotonic() - signalled
        assert code == 0 and took < GRACE_S + 2, (code, took)
        assert [(o.status, o.complete) for o in outcomes] == [(200, True)] * len(kinds)

        request_ids = {o.request_id for o in outcomes}
        assert None not in request_ids and len(request_ids) == len(kinds)
        check_stored_invariants(site.database, 0)
        with _read_database(site.database) as conn:
            usage = {
                row["request_id"]: row
                for row in conn.execute("SELECT * FROM usage WHERE account_id = ?", (account_id,))
            }
            charged = {
                row["request_id"]
                for row in conn.execute("SELECT request_id FROM ledger WHERE kind = 'charge'")
            }
        assert set(usage) == request_ids, "no usage row lost"
        assert charged == request_ids, "no charge lost"
        assert all(row["status"] == 200 and row["cost_micros"] > 0 for row in usage.values())

        restarted = await site.start()
        await check_live_wallets(restarted, site.database, 0)
        restarted.process.send_signal(signal.SIGTERM)
        assert await restarted.exit_code(GRACE_S + 5) == 0
    log = site.log.read_text()
    assert "Traceback" not in log and secret not in log


# ------------------------------------------------------------------------------ SIGKILL


async def _drive_until(
    relay: RelayProcess,
    secrets_: list[str],
    stop: asyncio.Event,
    rng: random.Random,
    answering: asyncio.Event,
) -> list[Outcome]:
    outcomes: list[Outcome] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            kind = rng.choice(["stream", "plain", "embedding"])
            outcome = await _one_request(client, rng.choice(secrets_), kind)
            outcomes.append(outcome)
            if outcome.status == 200:
                answering.set()

    async with relay.client(timeout=5.0) as client:
        await asyncio.gather(*(worker(client) for _ in range(16)))
    return outcomes


async def _credit(relay: RelayProcess, account_id: str, reference: str) -> bool:
    """A top-up during the load; True once the server acknowledged it."""
    with contextlib.suppress(httpx.HTTPError):
        async with relay.client(timeout=5.0) as client:
            body = {"amount_usd": "0.5", "reference": reference}
            response = await client.post(
                f"/admin/accounts/{account_id}/credits", json=body, headers=_admin_headers()
            )
            return response.status_code == 201
    return False


async def test_sigkill_at_random_moments_never_corrupts_or_double_charges(
    tmp_path: Path, test_seed: int
) -> None:
    seed = test_seed
    print(f"SIGKILL rounds seed: {seed}")
    rng = random.Random(seed)
    options = mock_upstream.MockOptions(latency_ms=20, stream_chunks=8, chunk_delay_ms=5)
    acknowledged: list[str] = []
    answered = 0
    async with site_with_upstream(tmp_path, options) as (site, _):
        relay = await site.start()
        async with relay.client() as client:
            funded = [await _funded_key(client, f"acct-{i}", "50") for i in range(2)]
        accounts = [account_id for account_id, _ in funded]
        keys = [secret for _, secret in funded]
        for round_ in range(ROUNDS):
            if round_:
                relay = await site.start()
                await check_live_wallets(relay, site.database, seed)
            stop = asyncio.Event()
            answering = asyncio.Event()
            load = asyncio.create_task(_drive_until(relay, keys, stop, rng, answering))
            reference = f"round-{round_}"
            credit = asyncio.create_task(_credit(relay, rng.choice(accounts), reference))
            # The random moment is counted from the first answer, so every round kills a
            # relay that is really serving, however slow the machine is to get going.
            await asyncio.wait_for(answering.wait(), timeout=30)
            await asyncio.sleep(rng.uniform(0.15, 0.6))
            relay.process.kill()  # SIGKILL
            stop.set()
            assert await relay.exit_code(5) == -signal.SIGKILL
            outcomes = await load
            if await credit:
                acknowledged.append(reference)
            answered += sum(o.status == 200 for o in outcomes)
            check_stored_invariants(site.database, seed)
            with _read_database(site.database) as conn:
                stored = {
                    row[0]
                    for row in conn.execute("SELECT reference FROM ledger WHERE kind = 'credit'")
                }
            assert set(acknowledged) <= stored, ("an acknowledged top-up was lost", seed)
        relay = await site.start()
        await check_live_wallets(relay, site.database, seed)
        relay.process.send_signal(signal.SIGTERM)
        assert await relay.exit_code(GRACE_S + 5) == 0
        with _read_database(site.database) as conn:
            usage_rows = conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0]
    assert answered > ROUNDS, "the load really ran"
    assert usage_rows >= answered // 2, (usage_rows, answered, seed)
