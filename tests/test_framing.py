"""Content-Length with Transfer-Encoding: refused and the connection closed, under the
real servers on 127.0.0.1 (a raw socket, since no HTTP client sends such a request)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
from conftest import CHAT_BODY, make_config
from support_accounts import run_relay

from relay.app import create_app

SMUGGLING = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
    b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"2\r\n{}\r\n0\r\n\r\n"
    b"GET /v1/models HTTP/1.1\r\nHost: relay\r\n\r\n"
)


def exchange_raw(port: int, payload: bytes) -> bytes:
    """Send ``payload`` and read until the server closes (or 3 s pass: kept open)."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(payload)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            return received + b"<still open>"
    return received + b"<closed>"


def assert_refused_and_closed(answer: bytes) -> None:
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert answer.count(b"HTTP/1.1 ") == 1, "the smuggled request was served"
    assert answer.endswith(b"<closed>"), answer


@contextlib.asynccontextmanager
async def serve_uvicorn(tmp_path: Path) -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    app = create_app(make_config(tmp_path))
    config = uvicorn.Config(app, http="httptools", lifespan="on", log_config=None)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(300):
            if server.started:
                break
            await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


async def test_hypercorn_refuses_cl_and_te_together_and_closes(
    tmp_path: Path, admin_token: str
) -> None:
    async with run_relay(make_config(tmp_path)) as relay:
        port = int(relay.base_url.rsplit(":", 1)[1])
        answer = await asyncio.to_thread(exchange_raw, port, SMUGGLING)
        assert_refused_and_closed(answer)
        assert b"invalid_request_error" in answer  # relay's own refusal: h11 let it through
        # Two different Content-Length values are as ambiguous (h11 itself refuses these).
        double = SMUGGLING.replace(b"Transfer-Encoding: chunked", b"Content-Length: 9")
        assert_refused_and_closed(await asyncio.to_thread(exchange_raw, port, double))
        # An ordinary request still works, and nothing reached the usage table.
        ok = await relay.client.post("/v1/chat/completions", json=CHAT_BODY)
        assert ok.status_code == 200
        rows = await relay.rows("SELECT endpoint FROM usage")
        assert len(rows) == 1


@pytest.mark.parametrize("payload", [SMUGGLING])
async def test_uvicorn_refuses_it_too(tmp_path: Path, admin_token: str, payload: bytes) -> None:
    async with serve_uvicorn(tmp_path) as port:
        answer = await asyncio.to_thread(exchange_raw, port, payload)
    assert answer.startswith(b"HTTP/1.1 400") and answer.count(b"HTTP/1.1 ") == 1, answer
    assert answer.endswith(b"<closed>")
