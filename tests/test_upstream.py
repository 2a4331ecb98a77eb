"""Tests for relay.upstream.client: both clients map network trouble to the three failures."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from conftest import mock_upstream

from relay.upstream.client import (
    AiohttpUpstream,
    HttpxUpstream,
    Timeouts,
    UpstreamConnectFailed,
    UpstreamStreamBroken,
    UpstreamTimedOut,
)

FAST = Timeouts(connect_s=1.0, first_byte_s=1.0, idle_s=1.0, total_s=1.0)
CHAT = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
STREAM = json.dumps({**json.loads(CHAT), "stream": True})


def _httpx(handler: Any) -> HttpxUpstream:
    return HttpxUpstream(httpx.AsyncClient(transport=httpx.MockTransport(handler)))


async def _wait_for(predicate: Any, timeout_s: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# ----------------------------------------------------------------- httpx over MockTransport


async def test_httpx_sends_and_reads_the_answer() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"ok": True}, headers={"x-request-id": "u1"})

    client = _httpx(handler)
    headers = {"authorization": "Bearer k"}
    response = await client.send(
        "POST", "http://up.test/v1/x", headers=headers, body=b"{}", timeouts=FAST
    )
    assert response.status == 201
    assert response.headers["x-request-id"] == "u1"
    assert json.loads(await response.read()) == {"ok": True}
    assert seen[0].headers["authorization"] == "Bearer k" and seen[0].content == b"{}"
    await client.aclose()


async def test_httpx_streams_chunks_as_they_come() -> None:
    async def body() -> AsyncIterator[bytes]:
        for part in (b"a", b"b", b"c"):
            yield part

    client = _httpx(lambda request: httpx.Response(200, content=body()))
    response = await client.send("POST", "http://up.test/", headers={}, body=None, timeouts=FAST)
    assert [chunk async for chunk in response.chunks()] == [b"a", b"b", b"c"]
    await response.aclose()
    await client.aclose()


async def test_httpx_no_headers_within_first_byte_timeout() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        raise AssertionError("not reached")

    client = _httpx(handler)
    timeouts = Timeouts(connect_s=1, first_byte_s=0.02, idle_s=1, total_s=1)
    with pytest.raises(UpstreamTimedOut):
        await client.send("POST", "http://up.test/", headers={}, body=None, timeouts=timeouts)
    await client.aclose()


async def test_httpx_connect_error_is_connect_failed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    client = _httpx(handler)
    with pytest.raises(UpstreamConnectFailed):
        await client.send("POST", "http://up.test/", headers={}, body=None, timeouts=FAST)
    await client.aclose()


async def test_httpx_idle_and_broken_streams() -> None:
    async def idle() -> AsyncIterator[bytes]:
        yield b"first"
        await asyncio.sleep(5)
        yield b"never"

    async def broken() -> AsyncIterator[bytes]:
        yield b"first"
        raise httpx.ReadError("reset")

    bodies = iter([idle(), broken()])
    client = _httpx(lambda request: httpx.Response(200, content=next(bodies)))
    timeouts = Timeouts(connect_s=1, first_byte_s=1, idle_s=0.02, total_s=1)
    for failure in (UpstreamTimedOut, UpstreamStreamBroken):
        response = await client.send(
            "POST", "http://up.test/", headers={}, body=None, timeouts=timeouts
        )
        received: list[bytes] = []
        with pytest.raises(failure):
            async for chunk in response.chunks():
                received.append(chunk)
        assert received == [b"first"]
        await response.aclose()
    await client.aclose()


# ----------------------------------------------------------------- aiohttp over real sockets


@pytest.fixture
async def aiohttp_client() -> AsyncIterator[AiohttpUpstream]:
    client = AiohttpUpstream(max_connections=8, connect_timeout_s=1.0)
    yield client
    await client.aclose()


async def test_aiohttp_answer_from_the_mock(upstream: Any, aiohttp_client: AiohttpUpstream) -> None:
    response = await aiohttp_client.send(
        "POST",
        upstream.base_url + "/chat/completions",
        headers={"authorization": "Bearer key-a", "content-type": "application/json"},
        body=CHAT.encode(),
        timeouts=FAST,
    )
    assert response.status == 200
    assert json.loads(await response.read())["usage"]["completion_tokens"] == 16
    await response.aclose()
    assert upstream.stats.by_key["key-a"] == 1


async def test_aiohttp_streams_to_the_end(upstream: Any, aiohttp_client: AiohttpUpstream) -> None:
    response = await aiohttp_client.send(
        "POST",
        upstream.base_url + "/chat/completions",
        headers={},
        body=STREAM.encode(),
        timeouts=FAST,
    )
    body = b"".join([chunk async for chunk in response.chunks()])
    assert body.endswith(b"data: [DONE]\n\n")
    await response.aclose()


async def test_aiohttp_upstream_dying_mid_stream_is_stream_broken(
    upstream: Any, aiohttp_client: AiohttpUpstream
) -> None:
    response = await aiohttp_client.send(
        "POST",
        upstream.base_url + "/chat/completions",
        headers={"x-mock-die-after-chunks": "2"},
        body=STREAM.encode(),
        timeouts=FAST,
    )
    assert response.status == 200
    received = b""
    with pytest.raises(UpstreamStreamBroken):
        async for chunk in response.chunks():
            received += chunk
    assert received.count(b"data: ") == 2
    await response.aclose()


async def test_aiohttp_slow_headers_time_out(
    upstream: Any, aiohttp_client: AiohttpUpstream
) -> None:
    timeouts = Timeouts(connect_s=1, first_byte_s=0.05, idle_s=1, total_s=1)
    with pytest.raises(UpstreamTimedOut):
        await aiohttp_client.send(
            "POST",
            upstream.base_url + "/chat/completions",
            headers={"x-mock-hang-ms": "2000"},
            body=CHAT.encode(),
            timeouts=timeouts,
        )
    await _wait_for(lambda: upstream.stats.in_flight == 0)


async def test_aiohttp_idle_stream_times_out(aiohttp_client: AiohttpUpstream) -> None:
    options = mock_upstream.MockOptions(chunk_delay_ms=1000)
    slow = await mock_upstream.start(port=0, options=options)
    try:
        timeouts = Timeouts(connect_s=1, first_byte_s=1, idle_s=0.05, total_s=1)
        url = slow.base_url + "/chat/completions"
        response = await aiohttp_client.send(
            "POST", url, headers={}, body=STREAM.encode(), timeouts=timeouts
        )
        with pytest.raises(UpstreamTimedOut):
            await anext(response.chunks())
        await _wait_for(lambda: slow.stats.in_flight == 0, timeout_s=1.0)
    finally:
        await slow.close()


async def test_aiohttp_closing_a_stream_cancels_the_upstream_request(
    aiohttp_client: AiohttpUpstream,
) -> None:
    slow = await mock_upstream.start(port=0, options=mock_upstream.MockOptions(chunk_delay_ms=50))
    try:
        url = slow.base_url + "/chat/completions"
        response = await aiohttp_client.send(
            "POST", url, headers={}, body=STREAM.encode(), timeouts=FAST
        )
        assert b"data: " in await anext(response.chunks())
        assert slow.stats.in_flight == 1
        await response.aclose()
        await _wait_for(lambda: slow.stats.in_flight == 0, timeout_s=1.0)
    finally:
        await slow.close()


async def test_aiohttp_refused_connection_is_connect_failed(
    aiohttp_client: AiohttpUpstream,
) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nobody listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UpstreamConnectFailed):
        await aiohttp_client.send(
            "POST", f"http://127.0.0.1:{port}/v1/x", headers={}, body=b"{}", timeouts=FAST
        )


async def test_aiohttp_a_malformed_answer_is_connect_failed(
    aiohttp_client: AiohttpUpstream,
) -> None:
    async def not_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(not_http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(UpstreamConnectFailed):
            await aiohttp_client.send(
                "POST", f"http://127.0.0.1:{port}/v1/x", headers={}, body=b"{}", timeouts=FAST
            )
    finally:
        server.close()
        await server.wait_closed()


async def test_aiohttp_upstream_parses_each_url_once_and_keeps_a_bounded_number() -> None:
    client = AiohttpUpstream(max_connections=1)
    try:
        first = client._url("http://127.0.0.1:9/v1/chat/completions")
        assert client._url("http://127.0.0.1:9/v1/chat/completions") is first
        assert str(first) == "http://127.0.0.1:9/v1/chat/completions"
        for n in range(100):  # e.g. one status path per video job
            assert str(client._url(f"http://127.0.0.1:9/v1/videos/v{n}")) == (
                f"http://127.0.0.1:9/v1/videos/v{n}"
            )
        assert len(client._urls) == 64
    finally:
        await client.aclose()
