"""Tests for scripts/mock_upstream.py, the fake OpenAI upstream used by benchmarks and tests."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "mock_upstream.py"
CHAT = {"model": "bench-model", "messages": [{"role": "user", "content": "hello there"}]}


def _load_mock_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mock_upstream", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


mock_upstream = _load_mock_module()


@pytest.fixture
async def mock() -> AsyncIterator[Any]:
    server = await mock_upstream.start(port=0)
    yield server
    await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def _sse_events(body: bytes) -> list[str]:
    return [block.removeprefix("data: ") for block in body.decode().split("\n\n") if block]


async def _post(
    session: aiohttp.ClientSession,
    mock: Any,
    payload: dict[str, Any],
    headers: dict[str, str] | None = None,
    path: str = "/chat/completions",
) -> tuple[int, dict[str, str], bytes]:
    async with session.post(mock.base_url + path, json=payload, headers=headers) as response:
        headers = {name.lower(): value for name, value in response.headers.items()}
        return response.status, headers, await response.read()


async def test_non_stream_answers_a_chat_completion_with_usage(
    mock: Any, session: aiohttp.ClientSession
) -> None:
    status, headers, body = await _post(session, mock, CHAT)
    data = json.loads(body)
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert data["object"] == "chat.completion"
    assert data["id"].startswith("chatcmpl-mock")
    assert data["model"] == "bench-model"
    assert data["choices"][0]["message"]["role"] == "assistant"
    usage = data["usage"]
    assert usage["prompt_tokens"] >= 1
    assert usage["completion_tokens"] == 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + 16


async def test_prompt_tokens_grow_with_the_body(mock: Any, session: aiohttp.ClientSession) -> None:
    long_chat = {**CHAT, "messages": [{"role": "user", "content": "x" * 4000}]}
    _, _, short_body = await _post(session, mock, CHAT)
    _, _, long_body = await _post(session, mock, long_chat)
    short_tokens = json.loads(short_body)["usage"]["prompt_tokens"]
    assert json.loads(long_body)["usage"]["prompt_tokens"] > short_tokens + 900


async def test_ids_differ_per_request(mock: Any, session: aiohttp.ClientSession) -> None:
    ids = {json.loads((await _post(session, mock, CHAT))[2])["id"] for _ in range(3)}
    assert len(ids) == 3


async def test_stream_with_usage_ends_with_usage_chunk_then_done(
    mock: Any, session: aiohttp.ClientSession
) -> None:
    payload = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    status, headers, body = await _post(session, mock, payload)
    events = _sse_events(body)
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    content = [c for c in chunks if c["choices"] and "content" in c["choices"][0]["delta"]]
    assert len(content) == 20
    assert content[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 20
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


async def test_stream_without_include_usage_has_no_usage(
    mock: Any, session: aiohttp.ClientSession
) -> None:
    _, _, body = await _post(session, mock, {**CHAT, "stream": True})
    events = _sse_events(body)
    assert events[-1] == "[DONE]"
    assert all("usage" not in json.loads(event) for event in events[:-1])


async def test_stream_chunks_and_chunk_delay_options() -> None:
    options = mock_upstream.MockOptions(stream_chunks=3, chunk_delay_ms=20)
    async with await mock_upstream.start(port=0, options=options) as server:
        async with aiohttp.ClientSession() as client:
            started = time.monotonic()
            _, _, body = await _post(client, server, {**CHAT, "stream": True})
            elapsed = time.monotonic() - started
    events = _sse_events(body)
    assert len(events) == 3 + 2  # content chunks, finish chunk, [DONE]
    assert elapsed >= 0.08  # a delay before each of the 5 parts after the headers


async def test_status_knob_answers_429_with_retry_after(
    mock: Any, session: aiohttp.ClientSession
) -> None:
    knobs = {"x-mock-status": "429", "x-mock-retry-after": "7"}
    status, headers, body = await _post(session, mock, CHAT, knobs)
    assert status == 429
    assert headers["retry-after"] == "7"
    assert json.loads(body)["error"]["code"] == "rate_limit_exceeded"


async def test_status_knob_answers_500_even_for_streams(
    mock: Any, session: aiohttp.ClientSession
) -> None:
    status, _, body = await _post(session, mock, {**CHAT, "stream": True}, {"x-mock-status": "500"})
    assert status == 500
    assert "error" in json.loads(body)


async def test_die_after_chunks_cuts_the_stream(mock: Any, session: aiohttp.ClientSession) -> None:
    received = b""
    knobs = {"x-mock-die-after-chunks": "3"}
    url = mock.base_url + "/chat/completions"
    with pytest.raises(aiohttp.ClientPayloadError):
        async with session.post(url, json={**CHAT, "stream": True}, headers=knobs) as response:
            assert response.status == 200
            async for chunk in response.content.iter_any():
                received += chunk
    assert received.count(b"data: ") == 3
    assert b"[DONE]" not in received


async def test_die_after_chunks_on_non_stream_truncates_the_body(mock: Any) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", mock.port)
    body = json.dumps(CHAT).encode()
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-mock-die-after-chunks: 0\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    received = await reader.read()  # returns at EOF: the mock closed the connection
    writer.close()
    await writer.wait_closed()
    head, _, rest = received.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    assert head.startswith(b"HTTP/1.1 200")
    assert len(rest) < length


async def test_hang_knob_delays_and_in_flight_peak_counts(
    mock: Any, session: aiohttp.ClientSession
) -> None:
    started = time.monotonic()
    results = await asyncio.gather(
        *(_post(session, mock, CHAT, {"x-mock-hang-ms": "100"}) for _ in range(4))
    )
    assert time.monotonic() - started >= 0.1
    assert [status for status, _, _ in results] == [200] * 4
    async with session.get(f"http://127.0.0.1:{mock.port}/_stats") as response:
        stats = await response.json()
    assert stats["in_flight_peak"] == 4
    assert stats["in_flight"] == 0


async def test_stats_count_requests_per_key_and_reset(
    mock: Any, session: aiohttp.ClientSession
) -> None:
    for key in ("sk-a", "sk-b", "sk-a"):
        await _post(session, mock, CHAT, {"Authorization": f"Bearer {key}"})
    await _post(session, mock, {"input": "x"}, path="/embeddings")
    root = f"http://127.0.0.1:{mock.port}"
    async with session.get(root + "/_stats") as response:
        stats = await response.json()
    assert stats["requests"] == 4
    assert stats["by_key"] == {"sk-a": 2, "sk-b": 1, "-": 1}
    assert stats["by_path"] == {"/v1/chat/completions": 3, "/v1/embeddings": 1}
    assert mock.stats.by_key["sk-a"] == 2
    async with session.post(root + "/_reset") as response:
        assert response.status == 200
    async with session.get(root + "/_stats") as response:
        assert (await response.json())["requests"] == 0


async def test_embeddings_and_models(mock: Any, session: aiohttp.ClientSession) -> None:
    status, _, body = await _post(
        session, mock, {"model": "e", "input": ["a", "b"]}, None, "/embeddings"
    )
    data = json.loads(body)
    assert status == 200
    assert [item["index"] for item in data["data"]] == [0, 1]
    assert data["usage"]["prompt_tokens"] >= 1
    async with session.get(mock.base_url + "/models") as response:
        models = await response.json()
    assert "bench-model" in {model["id"] for model in models["data"]}


async def test_bad_json_and_unknown_path(mock: Any, session: aiohttp.ClientSession) -> None:
    url = mock.base_url + "/chat/completions"
    async with session.post(url, data=b"{not json") as response:
        assert response.status == 400
    async with session.get(mock.base_url + "/nope") as response:
        assert response.status == 404


async def test_refuses_non_loopback_hosts() -> None:
    with pytest.raises(ValueError, match="loopback"):
        await mock_upstream.start(host="0.0.0.0", port=0)


def test_cli_refuses_non_loopback_hosts() -> None:
    with pytest.raises(SystemExit):
        mock_upstream.main(["--host", "10.0.0.1", "--port", "1"])
