"""`relay serve` processes in cluster mode, for the tests that run several of them.

``Cluster`` starts real ``relay serve`` subprocesses on ONE config file (each its own port on
127.0.0.1 through ``--listen``) against the throwaway PostgreSQL and Redis of
tests/support_cluster.py and the mock upstream (scripts/mock_upstream.py, served in the
test's event loop). The helpers drive the admin API and read PostgreSQL directly: balances
against the ledger's own rows, open holds (docs/scaling.md). Used by
tests/test_cluster_serve.py (two instances) and tests/test_cluster_nginx.py (three, behind
nginx).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from conftest import ADMIN_TOKEN, mock_upstream

__all__ = [
    "ADMIN",
    "LEASE_S",
    "Cluster",
    "Instance",
    "account",
    "chat",
    "cluster_site",
    "credit",
    "key",
    "money",
    "settled",
    "stream",
    "wait_until_ready",
    "wallet",
]

READY_TIMEOUT_S = 20.0
LEASE_S = 3.0
MODELS = """
[[providers]]
name = "fake"
kind = "openai"
base_url = "{upstream}"
api_keys = ["cluster-upstream-key"]
timeout_s = 10

[[models]]
name = "fake-gpt"
routes = ["fake:gpt-4o-mini"]
input_usd_per_mtok = "0.15"
output_usd_per_mtok = "0.60"
"""
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Instance:
    process: subprocess.Popen[bytes]
    base_url: str
    log: Path

    @property
    def port(self) -> int:
        return int(self.base_url.rpartition(":")[2])

    def instance_id(self) -> str:
        """The id this process registered its lease under (its start-up log line)."""
        found = re.search(r"cluster: instance (\S+) registered", self.log.read_text())
        assert found is not None, f"no instance id in {self.log}"
        return found.group(1)

    def client(self, timeout: float = 20.0) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=100)
        return httpx.AsyncClient(base_url=self.base_url, timeout=timeout, limits=limits)


@dataclass
class Cluster:
    """One config folder; every instance reads the same relay.toml (its port via the CLI)."""

    folder: Path
    dsn: str
    redis_url: str
    upstream_url: str
    lease_s: float = LEASE_S
    instances: list[Instance] = field(default_factory=list)

    def write_config(self) -> Path:
        config = self.folder / "relay.toml"
        config.write_text(
            '[server]\nlisten = "127.0.0.1:8787"\ndatabase = "relay.db"\nshutdown_grace_s = 5\n'
            f'[storage]\nurl = "{self.dsn}"\n'
            f'[cluster]\nredis_url = "{self.redis_url}"\nlease_s = {self.lease_s}\n'
            + MODELS.format(upstream=self.upstream_url)
        )
        return config

    async def start(self) -> Instance:
        instance = self.launch()
        await wait_until_ready(instance, self.folder)
        return instance

    async def start_launched(self, instances: list[Instance]) -> None:
        """Wait for instances launched together (they apply the migrations once between
        them): faster than one after the other on a small box."""
        await asyncio.gather(*(wait_until_ready(i, self.folder) for i in instances))

    def launch(self) -> Instance:
        """Start one process on a free port without waiting for it."""
        port = _free_port()
        config = self.write_config()
        env = {**os.environ, "RELAY_ADMIN_TOKEN": ADMIN_TOKEN}
        log_path = self.folder / f"instance-{len(self.instances)}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "relay.cli",
                    "serve",
                    "-c",
                    str(config),
                    "--listen",
                    f"127.0.0.1:{port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.folder,
            )
        instance = Instance(process, f"http://127.0.0.1:{port}", log_path)
        self.instances.append(instance)
        return instance

    def stop_all(self) -> None:
        for instance in self.instances:
            if instance.process.poll() is None:
                instance.process.send_signal(signal.SIGTERM)
        for instance in self.instances:
            try:
                instance.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                instance.process.kill()
                instance.process.wait()


async def wait_until_ready(instance: Instance, folder: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with instance.client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            if instance.process.poll() is not None:
                logs = "\n".join(p.read_text() for p in folder.glob("instance-*.log"))
                raise AssertionError(f"relay exited at start-up:\n{logs[-3000:]}")
            # Ours, not another process that took the port meanwhile (a shared machine).
            ours = f"Running on {instance.base_url} "  # hypercorn's line once it has bound
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/healthz")).status_code == 200 and (
                    ours in instance.log.read_text()
                ):
                    return
            await asyncio.sleep(0.05)
    raise AssertionError("relay did not become ready")


_redis_db = iter(range(1, 16))


@contextlib.asynccontextmanager
async def cluster_site(
    tmp_path: Path, pg_database: str, redis_server: Any, options: Any, lease_s: float = LEASE_S
) -> AsyncIterator[tuple[Cluster, Any]]:
    upstream = await mock_upstream.start(port=0, options=options)
    # A Redis database of its own per test: the session's Redis is shared.
    redis_url = f"redis://127.0.0.1:{redis_server.port}/{next(_redis_db)}"
    upstream_url = f"http://127.0.0.1:{upstream.port}/v1"
    cluster = Cluster(tmp_path, pg_database, redis_url, upstream_url, lease_s)
    try:
        yield cluster, upstream
    finally:
        await asyncio.to_thread(cluster.stop_all)
        await upstream.close()


async def account(client: httpx.AsyncClient, name: str) -> str:
    response = await client.post("/admin/accounts", json={"name": name}, headers=ADMIN)
    assert response.status_code == 201, response.text
    account_id: str = response.json()["id"]
    return account_id


async def credit(client: httpx.AsyncClient, account_id: str, usd: str, reference: str) -> Any:
    body = {"amount_usd": usd, "reference": reference}
    return await client.post(f"/admin/accounts/{account_id}/credits", json=body, headers=ADMIN)


async def key(client: httpx.AsyncClient, account_id: str, **fields: Any) -> tuple[str, str]:
    body = {"name": "load", **fields}
    response = await client.post(f"/admin/accounts/{account_id}/keys", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["secret"]


async def wallet(client: httpx.AsyncClient, account_id: str) -> dict[str, Any]:
    response = await client.get(f"/admin/accounts/{account_id}/wallet", headers=ADMIN)
    assert response.status_code == 200, response.text
    wallet: dict[str, Any] = response.json()
    return wallet


def chat(stream: bool, max_tokens: int = 64) -> dict[str, Any]:
    return {
        "model": "fake-gpt",
        "messages": [{"role": "user", "content": "cluster"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


async def stream(client: httpx.AsyncClient, secret: str) -> tuple[int, bool]:
    headers = {"authorization": f"Bearer {secret}"}
    try:
        async with client.stream(
            "POST", "/v1/chat/completions", json=chat(True), headers=headers
        ) as response:
            content = await response.aread()
    except httpx.HTTPError:
        return 0, False
    return response.status_code, content.rstrip().endswith(b"[DONE]")


async def settled(conn: Any, account_id: str, timeout_s: float = 10.0) -> None:
    """Wait until the account has no open hold (settlements are group-committed)."""
    deadline = time.monotonic() + timeout_s
    while await conn.fetchval("SELECT count(*) FROM holds WHERE account_id = $1", account_id):
        assert time.monotonic() < deadline, "holds still open"
        await asyncio.sleep(0.05)


async def money(conn: Any, account_id: str) -> tuple[int, int, int]:
    """(balance column, Σ ledger rows, Σ worst of open holds) straight from PostgreSQL."""
    row = await conn.fetchrow(
        "SELECT balance_micros, worst_micros FROM accounts WHERE id = $1", account_id
    )
    total = await conn.fetchval(
        "SELECT COALESCE(SUM(amount_micros), 0) FROM ledger WHERE account_id = $1", account_id
    )
    return int(row["balance_micros"]), int(total), int(row["worst_micros"])
