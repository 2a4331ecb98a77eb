"""hypercorn as relay configures it: no per-read timeout, and a trickled head is still cut.

relay leaves hypercorn's ``read_timeout`` unset (it costs a task and a timer per read).
These run hypercorn in-process with relay's own config, the idle timer shortened, to
show what then bounds a connection: a request head trickled byte by byte is closed once
the idle timer runs out, while a slow answer to a client that sends nothing is not.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from hypercorn.asyncio import serve
from starlette.types import Receive, Scope, Send

from relay.config import ServerConfig
from relay.server import _hypercorn_config

IDLE_S = 0.5


async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers every request with five chunks, 0.3 s apart (longer than the idle timer)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for _ in range(5):
        await asyncio.sleep(0.3)
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def served() -> AsyncIterator[int]:
    port = free_port()
    config = _hypercorn_config(ServerConfig(), None, f"127.0.0.1:{port}")
    assert config.read_timeout is None
    config.keep_alive_timeout = IDLE_S
    stop = asyncio.Event()
    server = asyncio.create_task(serve(slow_app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    try:
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.02)
            else:
                writer.close()
                break
        yield port
    finally:
        stop.set()
        await asyncio.wait_for(server, 5)


async def test_a_request_head_trickled_byte_by_byte_is_closed_by_the_idle_timer() -> None:
    head = b"GET / HTTP/1.1\r\nhost: x\r\n" + b"x-pad: " + b"a" * 200 + b"\r\n\r\n"
    async with served() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        sent = 0
        closed_after = None
        for byte in head[:-4]:  # never the end of the head
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                closed_after = time.monotonic() - started
                break
            sent += 1
            if reader.at_eof() or await _closed(reader):
                closed_after = time.monotonic() - started
                break
        writer.close()
    # 50 ms a byte would take 11 s for the whole padded head; the idle timer ends it.
    assert closed_after is not None, "the server kept a trickled head open"
    assert IDLE_S - 0.1 < closed_after < IDLE_S + 1.5, closed_after
    assert sent < len(head) // 2


async def _closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server closed the connection within 50 ms (it sends nothing before)."""
    try:
        data = await asyncio.wait_for(reader.read(1024), 0.05)
    except TimeoutError:
        return False
    return data == b""


async def test_an_answer_longer_than_the_idle_timer_to_a_silent_client_is_whole() -> None:
    async with served() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        await writer.drain()
        started = time.monotonic()
        answer = b""
        while not answer.endswith(b"0\r\n\r\n"):
            chunk = await asyncio.wait_for(reader.read(4096), 5)
            assert chunk, f"closed mid-answer: {answer!r}"
            answer += chunk
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.count(b"1\r\nx\r\n") == 5
    assert time.monotonic() - started > 3 * IDLE_S
