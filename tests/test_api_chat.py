"""System tests of the data plane (relay/api/chat.py and friends) over real loopback HTTP.

relay runs under hypercorn in the test's loop; upstreams are the in-process ``mock``
provider, ``FakeUpstream`` (records what relay sent) or scripts/mock_upstream.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import (
    ADMIN_TOKEN,
    CHAT_BODY,
    FakeUpstream,
    SeenRequest,
    chat_answer,
    error_reply,
    factory_with_headers,
    json_reply,
    make_config,
    mock_upstream,
    serve_relay,
    sse_event,
    sse_events,
    stream_reply,
)

METADATA_KEYS = {
    "request_id",
    "cost",
    "cost_micros",
    "provider",
    "provider_name",
    "executed_model",
    "upstream_id",
}
MARKER = "PROMPT-MARKER-7f3a"  # a prompt that must never reach the database


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["code"] == code
    return error


def _assert_metadata(response: httpx.Response) -> dict[str, Any]:
    metadata: dict[str, Any] = response.json()["metadata"]
    assert set(metadata) >= METADATA_KEYS
    assert response.headers["x-relay-request-id"] == metadata["request_id"]
    assert response.headers["x-request-id"] == metadata["request_id"]
    assert response.headers["x-relay-cost-micros"] == metadata["cost_micros"]
    # The SDKs type metadata as Dict[str, str]: every value is a string.
    assert all(isinstance(value, str) for value in metadata.values())
    assert metadata["cost_micros"].isdigit()
    usage = response.json().get("usage")
    if usage is not None:  # usage.cost: USD as a number, the same amount
        assert Decimal(str(usage["cost"])) == Decimal(metadata["cost_micros"]).scaleb(-6)
        assert Decimal(metadata["cost"]) == Decimal(metadata["cost_micros"]).scaleb(-6)
    return metadata


def _fake_chat(seen: SeenRequest) -> httpx.Response:
    if seen.body.get("stream"):
        parts = [
            sse_event(
                {"id": "up-1", "model": "gpt-4o-mini", "choices": [{"delta": {"content": "ok"}}]}
            ),
            sse_event(
                {
                    "id": "up-1",
                    "choices": [],
                    "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
                }
            ),
            b"data: [DONE]\n\n",
        ]
        return stream_reply(parts)
    return json_reply(200, chat_answer(seen.body["model"]))


@pytest.fixture
async def relay(tmp_path: Path, admin_token: str) -> AsyncIterator[Any]:
    async with serve_relay(make_config(tmp_path, server_extra="max_body_bytes = 4096")) as server:
        yield server


# ----------------------------------------------------------------- answers


async def test_chat_answer_carries_metadata_and_writes_a_usage_row(
    relay: Any, tmp_path: Path
) -> None:
    body = {**CHAT_BODY, "messages": [{"role": "user", "content": MARKER}]}
    response = await relay.client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["object"] == "chat.completion"
    metadata = _assert_metadata(response)
    assert metadata["provider"] == "mock" and metadata["executed_model"] == "mock-gpt"
    assert metadata["upstream_id"] == answer["id"]
    assert int(metadata["cost_micros"]) > 0
    [row] = await relay.usage_rows()
    assert row["request_id"] == metadata["request_id"]
    assert (row["status"], row["model"], row["provider"], row["stream"]) == (
        200,
        "mock-gpt",
        "mock",
        0,
    )
    assert row["prompt_tokens"] == answer["usage"]["prompt_tokens"]
    assert row["completion_tokens"] == answer["usage"]["completion_tokens"]
    assert row["cost_micros"] == int(metadata["cost_micros"])
    assert row["usage_estimated"] == 0
    assert MARKER not in json.dumps(row)
    for path in tmp_path.glob("relay.db*"):
        assert MARKER.encode() not in path.read_bytes()


async def test_embedding_answer_carries_metadata(relay: Any) -> None:
    response = await relay.client.post(
        "/v1/embeddings", json={"model": "mock-embedding", "input": ["a", "b"]}
    )
    assert response.status_code == 200
    assert len(response.json()["data"]) == 2
    assert _assert_metadata(response)["provider"] == "mock"
    [row] = await relay.usage_rows()
    assert row["endpoint"] == "embeddings" and row["status"] == 200


async def test_dry_run_prices_without_calling_the_upstream(relay: Any) -> None:
    response = await relay.client.post("/v1/chat/completions?dryRun=true", json=CHAT_BODY)
    assert response.status_code == 200
    assert response.json()["dry_run"] is True
    assert response.json()["estimate"]["model"] == "mock-gpt"
    assert await relay.usage_rows() == []


async def test_stream_ends_with_metadata_on_its_last_chunk_with_choices(relay: Any) -> None:
    async with relay.client.stream(
        "POST", "/v1/chat/completions", json={**CHAT_BODY, "stream": True}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        request_id = response.headers["x-relay-request-id"]
        assert response.headers["x-request-id"] == request_id
        body = await response.aread()
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["choices"] for chunk in chunks)  # never asked for usage: no usage chunk
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["metadata"]["request_id"] == request_id
    assert set(last["metadata"]) >= METADATA_KEYS
    assert all(isinstance(value, str) for value in last["metadata"].values())
    assert all("metadata" not in chunk for chunk in chunks[:-1])
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
    assert text.startswith("Hello from relay's mock model.")
    [row] = await relay.usage_rows()
    assert row["stream"] == 1 and row["status"] == 200
    assert row["cost_micros"] == int(last["metadata"]["cost_micros"]) > 0


async def test_a_stream_that_asked_for_usage_ends_with_the_usage_chunk(relay: Any) -> None:
    body = {**CHAT_BODY, "stream": True, "stream_options": {"include_usage": True}}
    response = await relay.client.post("/v1/chat/completions", json=body)
    events = sse_events(response.content)
    assert events[-1] == "[DONE]"
    finishing, usage_chunk = json.loads(events[-3]), json.loads(events[-2])
    assert finishing["choices"][0]["finish_reason"] == "stop" and "metadata" in finishing
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    [row] = await relay.usage_rows()
    assert row["completion_tokens"] == usage["completion_tokens"]
    assert Decimal(str(usage["cost"])) == Decimal(row["cost_micros"]).scaleb(-6)
    assert finishing["metadata"]["cost_micros"] == str(row["cost_micros"])


# ----------------------------------------------------------------- client errors


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "mock-gpt", "messages": []}', "messages"),
        (b'{"model": "mock-gpt", "messages": [{}], "max_tokens": 0}', "max_tokens"),
    ],
)
async def test_bad_bodies_are_400(relay: Any, content: bytes, needle: str) -> None:
    response = await relay.client.post(
        "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    error = _error(response, 400, "invalid_request_error")
    assert error["type"] == "invalid_request_error"
    assert needle in error["message"]
    assert response.headers["x-relay-request-id"].startswith("req_")


async def test_a_chat_model_on_the_embeddings_route_is_400(relay: Any) -> None:
    response = await relay.client.post("/v1/embeddings", json={"model": "mock-gpt", "input": "x"})
    assert _error(response, 400, "invalid_request_error")["param"] == "model"


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer wrong-token"}, {"authorization": "Basic abc"}],
)
async def test_missing_or_wrong_credentials_are_401(relay: Any, headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url, headers=headers) as client:
        response = await client.post("/v1/chat/completions", json=CHAT_BODY)
    error = _error(response, 401, "invalid_api_key")
    assert "wrong-token" not in response.text and ADMIN_TOKEN not in response.text
    assert error["type"] == "invalid_request_error"


async def test_unknown_model_is_404_model_not_found(relay: Any) -> None:
    response = await relay.client.post("/v1/chat/completions", json={**CHAT_BODY, "model": "nope"})
    assert "nope" in _error(response, 404, "model_not_found")["message"]
    assert "x-relay-request-id" in response.headers


async def test_unknown_route_is_404_and_wrong_method_405(relay: Any) -> None:
    _error(await relay.client.get("/v1/nothing"), 404, "not_found")
    _error(await relay.client.get("/v1/chat/completions"), 405, "invalid_request_error")


async def test_a_body_over_max_body_bytes_is_413(relay: Any) -> None:
    big = {**CHAT_BODY, "messages": [{"role": "user", "content": "x" * 5000}]}
    response = await relay.client.post("/v1/chat/completions", json=big)
    _error(response, 413, "request_too_large")


async def test_a_chunked_body_over_max_body_bytes_is_413(relay: Any) -> None:
    async def chunked() -> AsyncIterator[bytes]:
        yield b'{"model": "mock-gpt", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    response = await relay.client.post(
        "/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    _error(response, 413, "request_too_large")


# ----------------------------------------------------------------- upstream trouble


@pytest.fixture
async def faked(
    tmp_path: Path, admin_token: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Any, FakeUpstream]]:
    """relay whose ``fake`` provider is a FakeUpstream; the test sets its handler."""
    fake = FakeUpstream(_fake_chat)
    extra = getattr(request, "param", "")
    config = make_config(
        tmp_path,
        upstream_url="http://upstream.test/v1",
        upstream_keys=("key-a", "key-b"),
        provider_extra="first_byte_timeout_s = 0.1\n" + extra,
        extra='[[models]]\nname = "same-name"\nroutes = ["fake:same-name"]\n',
    )
    async with serve_relay(config, client_factory=fake.factory()) as server:
        yield server, fake


async def test_a_stream_asks_the_upstream_for_usage_and_leaves_the_rest_alone(
    faked: tuple[Any, FakeUpstream],
) -> None:
    relay, fake = faked
    sent = {
        "model": "fake-gpt",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "temperature": 0.2,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "user": "u-1",
    }
    response = await relay.client.post("/v1/chat/completions", json=sent)
    assert response.status_code == 200
    [seen] = fake.seen
    assert seen.body["stream_options"] == {"include_usage": True}
    assert {k: v for k, v in seen.body.items() if k != "stream_options"} == {
        **sent,
        "model": "gpt-4o-mini",
    }
    last = json.loads(sse_events(response.content)[-2])
    assert last["metadata"]["upstream_id"] == "up-1"
    [row] = await relay.usage_rows()
    assert row["prompt_tokens"] + row["completion_tokens"] == 10  # the upstream's usage


async def test_a_stream_body_is_re_encoded_with_relays_values(
    faked: tuple[Any, FakeUpstream],
) -> None:
    relay, fake = faked
    raw = b'{"model": "same-name", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
    response = await relay.client.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200
    assert json.loads(fake.seen[0].raw) == {
        **json.loads(raw),
        "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize(
    "options_keys",
    [
        # The escaped key decodes to the same "stream_options": the last one wins in relay's
        # decoder, and the re-encoded body holds it once, with relay's include_usage.
        b'"stream_options":{"include_usage":true},"stream\\u005foptions":{"include_usage":false}',
        b'"stream\\u005foptions":{"include_usage":false}',
        b'"stream_options":{"include_usage":false},"stream_options":{"include_usage":true}',
    ],
)
async def test_an_escaped_or_duplicate_key_cannot_turn_off_usage(
    faked: tuple[Any, FakeUpstream], options_keys: bytes
) -> None:
    relay, fake = faked
    head = b'{"model":"same-name","stream":true,"messages":[{"role":"user","content":"hi"}],'
    response = await relay.client.post(
        "/v1/chat/completions",
        content=head + options_keys + b"}",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200
    sent = fake.seen[0].raw
    assert sent.count(b"include_usage") == 1 and b"\\u" not in sent
    assert json.loads(sent)["stream_options"] == {"include_usage": True}


async def test_the_escaped_key_stream_costs_the_same_as_the_plain_one(
    faked: tuple[Any, FakeUpstream],
) -> None:
    relay, fake = faked
    head = b'{"model":"fake-gpt","stream":true,"messages":[{"role":"user","content":"hi"}],'
    costs = []
    for options in (
        b'"stream_options":{"include_usage":false}',
        b'"stream\\u005foptions":{"include_usage":false}',
    ):
        response = await relay.client.post(
            "/v1/chat/completions",
            content=head + options + b"}",
            headers={"content-type": "application/json"},
        )
        costs.append(json.loads(sse_events(response.content)[-2])["metadata"]["cost_micros"])
    rows = await relay.usage_rows()
    assert [row["usage_estimated"] for row in rows] == [0, 0]  # both billed from the upstream
    assert costs[0] == costs[1] and int(costs[0]) == rows[0]["cost_micros"] > 0


@pytest.mark.parametrize(
    "stream_options",
    [None, {}, {"include_usage": False}, {"include_usage": True}, {"other": 1}],
)
async def test_usage_is_asked_for_whatever_stream_options_the_client_sent(
    faked: tuple[Any, FakeUpstream], stream_options: dict[str, Any] | None
) -> None:
    relay, fake = faked
    sent = {**CHAT_BODY, "model": "same-name", "stream": True, "stream_options": stream_options}
    response = await relay.client.post("/v1/chat/completions", json=sent)
    assert response.status_code == 200
    assert fake.seen[0].body["stream_options"] == {**(stream_options or {}), "include_usage": True}
    events = sse_events(response.content)
    asked = bool((stream_options or {}).get("include_usage"))
    assert ("usage" in json.loads(events[-2])) is asked  # the client sees it only if it asked
    [row] = await relay.usage_rows()
    assert row["prompt_tokens"] + row["completion_tokens"] == 10


async def test_a_non_stream_body_goes_upstream_byte_for_byte(
    faked: tuple[Any, FakeUpstream],
) -> None:
    relay, fake = faked
    raw = b'{"model":"same-name","messages":[{"role":"user","content":"hi"}],"seed":7}'
    response = await relay.client.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200
    assert fake.seen[0].raw == raw
    _assert_metadata(response)


async def test_an_upstream_400_is_passed_back_as_is(faked: tuple[Any, FakeUpstream]) -> None:
    relay, fake = faked
    upstream_body = b'{"error":{"message":"context too long","type":"invalid_request_error"}}'
    fake.handler = lambda seen: json_reply(400, upstream_body)
    response = await relay.client.post(
        "/v1/chat/completions", json={**CHAT_BODY, "model": "fake-gpt"}
    )
    assert response.status_code == 400
    assert response.content == upstream_body
    assert len(fake.seen) == 1
    assert "x-relay-request-id" in response.headers
    [row] = await relay.usage_rows()
    assert (row["status"], row["error_code"], row["cost_micros"]) == (400, "upstream_rejected", 0)


async def test_an_upstream_4xx_without_a_body_gets_relay_error_shape(
    faked: tuple[Any, FakeUpstream],
) -> None:
    relay, fake = faked
    fake.handler = lambda seen: httpx.Response(404)
    response = await relay.client.post(
        "/v1/chat/completions", json={**CHAT_BODY, "model": "fake-gpt"}
    )
    error = _error(response, 404, "upstream_rejected")
    assert error["type"] == "invalid_request_error"


async def test_upstream_5xx_everywhere_is_502(faked: tuple[Any, FakeUpstream]) -> None:
    relay, fake = faked
    fake.handler = lambda seen: error_reply(500)
    response = await relay.client.post(
        "/v1/chat/completions", json={**CHAT_BODY, "model": "fake-gpt"}
    )
    _error(response, 502, "upstream_error")
    assert response.headers["x-relay-cost-micros"] == "0"
    assert len(fake.seen) == 3
    [row] = await relay.usage_rows()
    assert (row["status"], row["error_code"], row["cost_micros"]) == (502, "upstream_error", 0)


async def test_all_keys_rate_limited_is_429_with_retry_after(
    faked: tuple[Any, FakeUpstream],
) -> None:
    relay, fake = faked
    fake.handler = lambda seen: error_reply(429, {"retry-after": "12"})
    response = await relay.client.post(
        "/v1/embeddings", json={"model": "fake-embedding", "input": "x"}
    )
    # Issue 15: the SDKs must see RateLimitError (429), not InternalServerError (503).
    assert _error(response, 429, "rate_limit_exceeded")
    assert response.json()["error"]["type"] == "rate_limit_error"
    assert response.headers["retry-after"] in ("12", "13")
    assert fake.keys == ["key-a", "key-b"]


async def test_an_upstream_that_never_answers_is_504(faked: tuple[Any, FakeUpstream]) -> None:
    relay, fake = faked

    async def hang(seen: SeenRequest) -> httpx.Response:
        await asyncio.sleep(5)
        raise AssertionError("not reached")

    fake.handler = hang
    response = await relay.client.post(
        "/v1/chat/completions", json={**CHAT_BODY, "model": "fake-gpt", "stream": True}
    )
    _error(response, 504, "upstream_timeout")


async def test_a_provider_without_keys_is_503_naming_the_variable(
    tmp_path: Path, admin_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RELAY_TEST_UNSET_KEY", raising=False)
    config = make_config(
        tmp_path,
        upstream_url="http://upstream.test/v1",
        upstream_keys=("env:RELAY_TEST_UNSET_KEY",),
    )
    async with serve_relay(config) as relay:
        response = await relay.client.post(
            "/v1/chat/completions", json={**CHAT_BODY, "model": "fake-gpt"}
        )
        assert "RELAY_TEST_UNSET_KEY" in _error(response, 503, "no_upstream_available")["message"]


# ----------------------------------------------------------------- real sockets upstream


async def test_an_upstream_dying_mid_stream_ends_the_stream_cleanly(
    tmp_path: Path, admin_token: str, upstream: Any
) -> None:
    config = make_config(tmp_path, upstream_url=upstream.base_url)
    factory = factory_with_headers({"x-mock-die-after-chunks": "3"})
    async with serve_relay(config, client_factory=factory) as relay:
        response = await asyncio.wait_for(
            relay.client.post(
                "/v1/chat/completions", json={**CHAT_BODY, "model": "fake-gpt", "stream": True}
            ),
            timeout=5,
        )
        assert response.status_code == 200
        events = sse_events(response.content)
        assert events[-1] == "[DONE]"
        contents = [json.loads(event) for event in events[:-1]]
        errors = [event for event in contents if "error" in event]
        assert len(errors) == 1 and errors[0]["error"]["code"] == "upstream_error"
        assert contents.index(errors[0]) == 3  # after the three chunks that did arrive
        assert "metadata" in contents[-1]
        [row] = await relay.usage_rows()
        assert (row["status"], row["error_code"], row["usage_estimated"]) == (
            502,
            "upstream_error",
            1,
        )
        assert row["completion_tokens"] > 0  # what was delivered is billed


async def test_a_client_leaving_mid_stream_cancels_the_upstream_and_is_logged_499(
    tmp_path: Path, admin_token: str
) -> None:
    options = mock_upstream.MockOptions(chunk_delay_ms=100, stream_chunks=50)
    slow = await mock_upstream.start(port=0, options=options)
    try:
        config = make_config(tmp_path, upstream_url=slow.base_url)
        async with serve_relay(config) as relay:
            body = {**CHAT_BODY, "model": "fake-gpt", "stream": True}
            async with httpx.AsyncClient(
                base_url=relay.base_url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
            ) as client:
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    assert response.status_code == 200
                    first = await anext(response.aiter_bytes())
                    assert b"data: " in first
                    assert slow.stats.in_flight == 1
            # The client connection is closed now; relay must drop the upstream at once.
            for _ in range(100):
                if slow.stats.in_flight == 0:
                    break
                await asyncio.sleep(0.01)
            assert slow.stats.in_flight == 0
            rows: list[dict[str, Any]] = []
            for _ in range(100):
                rows = await relay.usage_rows()
                if rows:
                    break
                await asyncio.sleep(0.01)
            [row] = rows
            assert row["status"] == 499
            assert row["error_code"] == "client_disconnected"
            assert row["usage_estimated"] == 1
            assert row["stream"] == 1
            assert row["completion_tokens"] >= 1
    finally:
        await slow.close()
