"""Shared test fixtures: the fake upstreams, config files, and relay served on 127.0.0.1.

Two fake upstreams are available. ``FakeUpstream`` is an ``httpx.MockTransport`` handler
wired in through relay's upstream seam (no socket; it records what relay sent and answers
from a script). ``scripts/mock_upstream.py`` is a real HTTP server on an ephemeral
loopback port with fault knobs (``x-mock-status``, ``x-mock-die-after-chunks``, ...).

``serve_relay`` runs the real app under hypercorn in the test's own event loop on an
ephemeral 127.0.0.1 port, and exposes its lifespan state so tests can flush and read the
database.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import secrets
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from starlette.types import ASGIApp, Receive, Scope, Send

# The throwaway PostgreSQL and Redis of the cluster tests: session fixtures, defined once here.
from support_cluster import pg_database, postgres_server, redis_prefix, redis_server  # noqa: F401

# The local webhook receiver of the alert tests (embedded and cluster).
from support_hooks import hook  # noqa: F401

from relay.app import create_app
from relay.config import Config, ProviderConfig, parse_config
from relay.state import RelayState
from relay.upstream.client import HttpxUpstream, Timeouts, UpstreamClient, UpstreamResponse
from relay.upstream.providers import ClientFactory, default_client_factory

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "test-admin-token"
CHAT_BODY: dict[str, Any] = {"model": "mock-gpt", "messages": [{"role": "user", "content": "Hi"}]}


def load_mock_upstream() -> ModuleType:
    """``scripts/mock_upstream.py`` as a module (shared with tests/test_mock_upstream.py)."""
    loaded = sys.modules.get("mock_upstream")
    if loaded is not None:
        return loaded
    path = ROOT / "scripts" / "mock_upstream.py"
    spec = importlib.util.spec_from_file_location("mock_upstream", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


mock_upstream = load_mock_upstream()

# One seed for every randomised test of a run: printed in the header, reproduced with
# RELAY_TEST_SEED=<seed> scripts/test. Hypothesis takes it too (unless --hypothesis-seed).
SEED_KEY = pytest.StashKey[int]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    seed = int(os.environ.get("RELAY_TEST_SEED") or secrets.randbits(32))
    config.stash[SEED_KEY] = seed
    if getattr(config.option, "hypothesis_seed", None) is None:
        config.option.hypothesis_seed = str(seed)


def _seed_line(config: pytest.Config) -> str:
    seed = config.stash[SEED_KEY]
    return f"relay test seed: {seed} (reproduce with RELAY_TEST_SEED={seed} scripts/test)"


def pytest_report_header(config: pytest.Config) -> str:
    return _seed_line(config)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    # Printed at the end too: -q (the default here) hides the header.
    terminalreporter.write_line(_seed_line(config))


@pytest.fixture
def test_seed(request: pytest.FixtureRequest) -> int:
    """The run's seed, for tests that draw their own random numbers."""
    return request.config.stash[SEED_KEY]


@pytest.fixture
def admin_token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("RELAY_ADMIN_TOKEN", ADMIN_TOKEN)
    return ADMIN_TOKEN


@pytest.fixture
async def upstream() -> AsyncIterator[Any]:
    """The fast mock upstream on an ephemeral loopback port, default options."""
    server = await mock_upstream.start(port=0)
    try:
        yield server
    finally:
        await server.close()


def config_text(
    database: Path,
    *,
    upstream_url: str | None = None,
    upstream_keys: tuple[str, ...] = ("key-a",),
    server_extra: str = "",
    provider_extra: str = "",
    extra: str = "",
) -> str:
    """A config with the in-process ``mock`` provider (models ``mock-gpt``,
    ``mock-embedding``) and, given ``upstream_url``, an OpenAI-kind provider ``fake`` with
    models ``fake-gpt`` (upstream ``gpt-4o-mini``) and ``fake-embedding``."""
    text = f"""
[server]
listen = "127.0.0.1:8787"
database = "{database}"
flush_interval_ms = 10
{server_extra}

[[providers]]
name = "mock"
kind = "mock"

[[models]]
name = "mock-gpt"
routes = ["mock:mock-gpt"]
input_usd_per_mtok = "0.15"
output_usd_per_mtok = "0.60"

[[models]]
name = "mock-embedding"
kind = "embedding"
routes = ["mock:mock-embedding"]
input_usd_per_mtok = "0.02"
"""
    if upstream_url is not None:
        keys = ", ".join(json.dumps(key) for key in upstream_keys)
        text += f"""
[[providers]]
name = "fake"
kind = "openai"
base_url = "{upstream_url}"
api_keys = [{keys}]
connect_timeout_s = 2
timeout_s = 5
idle_timeout_s = 5
{provider_extra}

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
    return text + extra


def make_config(tmp_path: Path, **kwargs: Any) -> Config:
    return parse_config(config_text(tmp_path / "relay.db", **kwargs), base_dir=str(tmp_path))


# ----------------------------------------------------------------- in-process fake upstream

Handler = Callable[["SeenRequest"], Awaitable[httpx.Response] | httpx.Response]


@dataclass
class SeenRequest:
    """What relay sent upstream: the key it used and the decoded JSON body."""

    url: str
    key: str
    body: dict[str, Any]
    raw: bytes


@dataclass
class FakeUpstream:
    """An ``httpx.MockTransport`` upstream driven by ``handler``; records every request."""

    handler: Handler
    seen: list[SeenRequest] = field(default_factory=list)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        raw = await request.aread()
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        seen = SeenRequest(str(request.url), key, json.loads(raw) if raw else {}, raw)
        self.seen.append(seen)
        result = self.handler(seen)
        if isinstance(result, httpx.Response):
            return result
        return await result

    def client(self) -> UpstreamClient:
        transport = httpx.MockTransport(self._handle)
        return HttpxUpstream(httpx.AsyncClient(transport=transport))

    def factory(self) -> ClientFactory:
        """Fake the openai-kind providers; the ``mock`` kind stays in-process."""

        def build(config: ProviderConfig) -> UpstreamClient:
            if config.kind == "mock":
                return default_client_factory(config)
            return self.client()

        return build

    @property
    def keys(self) -> list[str]:
        return [seen.key for seen in self.seen]


class HeaderAddingUpstream:
    """Relay's real client, plus request headers (the mock upstream's fault knobs)."""

    def __init__(self, inner: UpstreamClient, extra: Mapping[str, str]):
        self._inner = inner
        self._extra = extra  # read at each send, so a test may change it between requests

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        merged = {**headers, **self._extra}
        return await self._inner.send(method, url, headers=merged, body=body, timeouts=timeouts)

    async def aclose(self) -> None:
        await self._inner.aclose()


def factory_with_headers(extra: Mapping[str, str]) -> ClientFactory:
    """The production clients, with ``extra`` headers on every upstream request."""

    def build(config: ProviderConfig) -> UpstreamClient:
        client = default_client_factory(config)
        return client if config.kind == "mock" else HeaderAddingUpstream(client, extra)

    return build


def chat_answer(model: str = "gpt-4o-mini", *, prompt: int = 10, completion: int = 5) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
    ).encode()


def json_reply(
    status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(
        status, content=body, headers={"content-type": "application/json", **(headers or {})}
    )


def error_reply(status: int, headers: Mapping[str, str] | None = None) -> httpx.Response:
    body = json.dumps({"error": {"message": f"upstream {status}", "type": "x", "code": "x"}})
    return json_reply(status, body.encode(), headers)


def sse_event(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


def stream_reply(parts: Iterable[bytes], fail_after: int | None = None) -> httpx.Response:
    """A streamed 200; with ``fail_after`` the connection breaks after that many parts."""

    async def body() -> AsyncIterator[bytes]:
        for index, part in enumerate(parts):
            if index == fail_after:
                raise httpx.ReadError("connection reset")
            yield part
        if fail_after is not None:
            raise httpx.ReadError("connection reset")

    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())


def sse_events(body: bytes) -> list[str]:
    """The data of each event of an SSE body, in order."""
    events = body.replace(b"\r\n", b"\n").decode().split("\n\n")
    return [event.removeprefix("data: ") for event in events if event.strip()]


# ----------------------------------------------------------------- relay served in-process


class _LifespanStateCapture:
    """Pass-through ASGI wrapper that keeps the lifespan state dict the server hands over."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.state: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.state = scope["state"]
        await self.app(scope, receive, send)


@dataclass
class RelayServer:
    base_url: str
    client: httpx.AsyncClient
    _capture: _LifespanStateCapture

    @property
    def state(self) -> RelayState:
        state: RelayState = self._capture.state["relay"]
        return state

    async def usage_rows(self) -> list[dict[str, Any]]:
        """Every usage row, after the writer has committed what is queued."""
        await self.state.db.flush()
        rows = await self.state.db.fetchall("SELECT * FROM usage ORDER BY id")
        return [dict(row) for row in rows]


def loopback_socket_fd() -> tuple[int, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    return sock.detach(), port  # hypercorn takes the descriptor over (bind "fd://N")


async def wait_until_ready(client: httpx.AsyncClient, task: asyncio.Task[None]) -> None:
    for _ in range(300):
        if task.done():
            task.result()  # a start-up failure surfaces here
        with contextlib.suppress(httpx.TransportError):
            if (await client.get("/healthz")).status_code == 200:
                return
        await asyncio.sleep(0.01)
    raise TimeoutError("relay did not become ready")


@contextlib.asynccontextmanager
async def serve_relay(
    config: Config,
    *,
    client_factory: ClientFactory | None = None,
    token: str = ADMIN_TOKEN,
) -> AsyncIterator[RelayServer]:
    """Run relay under hypercorn on an ephemeral 127.0.0.1 port until the block exits."""
    capture = _LifespanStateCapture(create_app(config, client_factory=client_factory))
    fd, port = loopback_socket_fd()
    hc = HypercornConfig()
    hc.bind = [f"fd://{fd}"]
    hc.graceful_timeout = 1.0
    hc.accesslog = None
    stop = asyncio.Event()
    task = asyncio.create_task(serve(capture, hc, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    base_url = f"http://127.0.0.1:{port}"
    client = httpx.AsyncClient(
        base_url=base_url, headers={"authorization": f"Bearer {token}"}, timeout=10.0
    )
    try:
        await wait_until_ready(client, task)
        yield RelayServer(base_url, client, capture)
    finally:
        await client.aclose()
        stop.set()
        await asyncio.wait_for(task, 10)
