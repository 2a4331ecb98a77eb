"""Helpers for the system tests of keys, limits and billing (tests/test_api_keys.py,
tests/test_admin_api.py, tests/test_billing.py).

``run_relay`` serves the real app under hypercorn on an ephemeral 127.0.0.1 port like
conftest's ``serve_relay``, but also passes a cheap, call-counting argon2 hasher through
``create_app(hasher=...)`` so key creation and first verification stay fast. The running
app is a ``Relay``: an admin-authenticated client plus shortcuts for the admin API and
for reading the ledger, usage and audit tables after the writer has flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from conftest import ADMIN_TOKEN, loopback_socket_fd, wait_until_ready
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.app import create_app
from relay.config import Config
from relay.identity.keys import KeyHasher
from relay.state import RelayState
from relay.upstream.providers import ClientFactory

__all__ = [
    "CountingHasher",
    "Relay",
    "ServedRequest",
    "TimedResponse",
    "auth",
    "burst",
    "chat_body",
    "forge_key",
    "run_relay",
    "wait_until",
]

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class CountingHasher:
    """argon2id at its cheapest parameters, counting ``verify`` calls (run in threads)."""

    def __init__(self) -> None:
        self._inner = KeyHasher(time_cost=1, memory_cost_kib=8, parallelism=1)
        self._lock = threading.Lock()
        self.verify_calls = 0

    def hash(self, full_key: str) -> str:
        return self._inner.hash(full_key)

    def verify(self, stored_hash: str, full_key: str) -> bool:
        with self._lock:
            self.verify_calls += 1
        return self._inner.verify(stored_hash, full_key)


def auth(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def chat_body(model: str = "mock-gpt", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], **extra}


def forge_key(key_id: str, secret: str) -> str:
    """A well-formed key (valid checksum) for ``key_id`` with a made-up ``secret``.

    Computed here rather than through relay's private helper, so the test also pins the
    documented checksum (CRC32 of ``rk_<id>_<secret>`` as 6 base62 digits).
    """
    body = f"rk_{key_id}_{secret}"
    value = zlib.crc32(body.encode("ascii"))
    digits = []
    for _ in range(6):
        value, digit = divmod(value, 62)
        digits.append(_BASE62[digit])
    return body + "".join(reversed(digits))


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll ``predicate()`` until it is true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


@dataclass
class TimedResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


async def burst(
    base_url: str, requests: list[tuple[str, dict[str, Any], dict[str, str]]]
) -> list[TimedResponse]:
    """Send every (path, json body, headers) POST at once on its own connection; time each."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30.0) as client:

        async def one(path: str, body: dict[str, Any], headers: dict[str, str]) -> TimedResponse:
            started = time.perf_counter()
            response = await client.post(path, json=body, headers=headers)
            return TimedResponse(
                response.status_code,
                response.headers,
                response.content,
                time.perf_counter() - started,
            )

        return list(await asyncio.gather(*(one(*request) for request in requests)))


@dataclass(frozen=True)
class ServedRequest:
    """One HTTP request as the server saw it: from its arrival to its last body byte."""

    path: str
    status: int
    seconds: float


class _AppProbe:
    """Pass-through ASGI wrapper: keeps the lifespan state (so tests reach ``RelayState``)
    and times every HTTP request server-side, where a loaded test loop cannot blur it."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.state: dict[str, Any] = {}
        self.served: list[ServedRequest] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.state = scope["state"]
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                elapsed = time.perf_counter() - started
                self.served.append(ServedRequest(scope["path"], status, elapsed))

        await self.app(scope, receive, timed_send)


@dataclass
class Relay:
    """A running relay: an admin client, the hasher, and database readers."""

    base_url: str
    client: httpx.AsyncClient
    hasher: CountingHasher
    _capture: _AppProbe = field(repr=False)

    @property
    def served(self) -> list[ServedRequest]:
        """Every HTTP request served so far, with its server-side duration."""
        return self._capture.served

    @property
    def lifespan_state(self) -> dict[str, Any]:
        """Everything the lifespan yielded (the reloader, the alert watcher, ...)."""
        return self._capture.state

    @property
    def state(self) -> RelayState:
        state: RelayState = self._capture.state["relay"]
        return state

    # -- admin API shortcuts (each asserts success) --------------------------------------

    async def create_account(self, name: str, **fields: Any) -> dict[str, Any]:
        response = await self.client.post("/admin/accounts", json={"name": name, **fields})
        assert response.status_code == 201, response.text
        account: dict[str, Any] = response.json()
        return account

    async def create_key(self, account: str, name: str = "k", **fields: Any) -> dict[str, Any]:
        response = await self.client.post(
            f"/admin/accounts/{account}/keys", json={"name": name, **fields}
        )
        assert response.status_code == 201, response.text
        key: dict[str, Any] = response.json()
        return key

    async def credit(self, account: str, amount_usd: str, reference: str) -> httpx.Response:
        return await self.client.post(
            f"/admin/accounts/{account}/credits",
            json={"amount_usd": amount_usd, "reference": reference},
        )

    async def funded_key(
        self, name: str, amount_usd: str = "100", **key_fields: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A new account credited ``amount_usd``, and one key on it: (account, key)."""
        account = await self.create_account(name)
        credited = await self.credit(account["id"], amount_usd, f"seed-{name}")
        assert credited.status_code == 201, credited.text
        return account, await self.create_key(account["id"], **key_fields)

    # -- database readers (after the writer committed everything queued) ----------------

    async def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        await self.state.db.flush()
        return [dict(row) for row in await self.state.db.fetchall(sql, params)]

    async def ledger(self, account_id: str) -> list[dict[str, Any]]:
        return await self.rows(
            "SELECT * FROM ledger WHERE account_id = ? ORDER BY id", (account_id,)
        )

    async def charges(self, account_id: str) -> list[dict[str, Any]]:
        return await self.rows(
            "SELECT * FROM ledger WHERE account_id = ? AND kind = 'charge' ORDER BY id",
            (account_id,),
        )

    async def ledger_sum(self, account_id: str) -> int:
        return sum(int(row["amount_micros"]) for row in await self.ledger(account_id))

    async def usage(self, request_id: str) -> dict[str, Any]:
        rows = await self.rows("SELECT * FROM usage WHERE request_id = ?", (request_id,))
        assert len(rows) == 1, rows
        return rows[0]

    async def audit(self) -> list[dict[str, Any]]:
        return await self.rows("SELECT * FROM audit ORDER BY id")


@contextlib.asynccontextmanager
async def run_relay(
    config: Config,
    *,
    client_factory: ClientFactory | None = None,
    hasher: CountingHasher | None = None,
    token: str = ADMIN_TOKEN,
    stripe_transport: httpx.AsyncBaseTransport | None = None,
    wall_clock_ms: Callable[[], int] | None = None,
) -> AsyncIterator[Relay]:
    """Serve relay on 127.0.0.1 until the block exits (then drain and close the app)."""
    hasher = hasher or CountingHasher()
    clock = {} if wall_clock_ms is None else {"wall_clock_ms": wall_clock_ms}
    app = create_app(
        config,
        client_factory=client_factory,
        hasher=hasher,
        stripe_transport=stripe_transport,
        **clock,
    )
    capture = _AppProbe(app)
    fd, port = loopback_socket_fd()
    hc = HypercornConfig()
    hc.bind = [f"fd://{fd}"]
    hc.graceful_timeout = 1.0
    hc.accesslog = None
    hc.backlog = 1024  # bursts open hundreds of connections at once
    stop = asyncio.Event()
    task = asyncio.create_task(serve(capture, hc, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    base_url = f"http://127.0.0.1:{port}"
    client = httpx.AsyncClient(
        base_url=base_url, headers={"authorization": f"Bearer {token}"}, timeout=10.0
    )
    try:
        await wait_until_ready(client, task)
        yield Relay(base_url, client, hasher, capture)
    finally:
        await client.aclose()
        stop.set()
        await asyncio.wait_for(task, 10)
