"""System tests of ``POST /v1/messages`` and of chat routed to an Anthropic upstream.

The official ``anthropic`` and ``openai`` SDKs talk to a real relay on 127.0.0.1; the
Anthropic upstream is an ``httpx.MockTransport`` answering the hand-written fixtures in
tests/fixtures/ (public API shapes). Checked: what reaches the upstream (auth, headers,
translated bodies), what the SDKs read back, and what is charged (cache reads and writes
priced at their own prices).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from conftest import make_config
from support_accounts import Relay, run_relay

from relay.config import ProviderConfig
from relay.upstream.client import HttpxUpstream, UpstreamClient
from relay.upstream.providers import ClientFactory, default_client_factory

FIXTURES = Path(__file__).parent / "fixtures"
POOL_KEY = "sk-ant-pool-key"
CLAUDE = f"""
[[providers]]
name = "claude"
kind = "anthropic"
base_url = "http://anthropic.test/v1"
api_keys = ["{POOL_KEY}"]
max_attempts = 1

[[models]]
name = "claude-x"
routes = ["claude:claude-sonnet-4-5"]
input_usd_per_mtok = "3"
output_usd_per_mtok = "15"
cached_input_usd_per_mtok = "0.30"
cache_write_usd_per_mtok = "3.75"
max_output_tokens = 8192
"""
Reply = Callable[[dict[str, Any]], httpx.Response]
HI = [{"role": "user", "content": "Hi"}]


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


async def _pieces(data: bytes, size: int = 97) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def streamed(status: int, data: bytes, content_type: str) -> httpx.Response:
    """A response whose body arrives in pieces, as from a real socket."""
    return httpx.Response(status, content=_pieces(data), headers={"content-type": content_type})


def anthropic_reply(body: dict[str, Any]) -> httpx.Response:
    """The default fake: the text answer, or its stream when asked to stream."""
    if body.get("stream"):
        return streamed(200, fixture("anthropic_stream.sse"), "text/event-stream")
    return streamed(200, fixture("anthropic_message.json"), "application/json")


@dataclass
class FakeAnthropic:
    """The Anthropic API as an ``httpx.MockTransport``; records every request it gets."""

    reply: Reply = anthropic_reply
    seen: list[httpx.Request] = field(default_factory=list)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.seen.append(request)
        return self.reply(json.loads(request.content))

    def factory(self) -> ClientFactory:
        def build(config: ProviderConfig) -> UpstreamClient:
            if config.kind == "mock":
                return default_client_factory(config)
            return HttpxUpstream(httpx.AsyncClient(transport=httpx.MockTransport(self._handle)))

        return build

    @property
    def last_body(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.seen[-1].content)
        return body


@dataclass
class Setup:
    relay: Relay
    upstream: FakeAnthropic
    account_id: str
    secret: str

    def anthropic(self) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            base_url=self.relay.base_url, api_key=self.secret, max_retries=0
        )

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.relay.base_url + "/v1",
            api_key=self.secret,
            max_retries=0,
            http_client=httpx.AsyncClient(),
        )

    async def only_charge(self) -> int:
        (charge,) = await self.relay.charges(self.account_id)
        return -int(charge["amount_micros"])


@pytest.fixture
async def setup(tmp_path: Path, admin_token: str) -> AsyncIterator[Setup]:
    upstream = FakeAnthropic()
    config = make_config(tmp_path, extra=CLAUDE)
    async with run_relay(config, client_factory=upstream.factory()) as relay:
        account, key = await relay.funded_key("claude-user")
        yield Setup(relay, upstream, account["id"], key["secret"])


# Costs in micro-USD at the prices of claude-x (USD per million tokens = micro-USD per token).
TEXT_ANSWER_COST = 12 * 3 + 2000 * 0.30 + 1000 * 3.75 + 9 * 15  # anthropic_message.json
STREAM_COST = 25 * 3 + 400 * 0.30 + 100 * 3.75 + 15 * 15  # anthropic_stream.sse
TOOL_ANSWER_COST = 380 * 3 + 64 * 15  # anthropic_tool_use.json


# ----------------------------------------------------------------- /v1/messages, native


async def test_anthropic_sdk_message_passes_through_natively(setup: Setup) -> None:
    async with setup.anthropic() as client:
        reply = await client.messages.create(
            model="claude-x",
            max_tokens=256,
            system="Be nice.",
            # Long enough that the request's worst case covers the fixture's reported usage
            # (3,012 input tokens): a charge is capped at the worst case (issue 14).
            messages=[{"role": "user", "content": "Hello " + "words " * 200}],
            extra_headers={"anthropic-beta": "prompt-caching-2024-07-31"},
        )
    assert reply.id == "msg_01FixtureTextAnswer"
    assert reply.content[0].type == "text" and reply.content[0].text.startswith("Hello!")
    assert reply.usage.cache_read_input_tokens == 2000
    sent = setup.upstream.seen[-1]
    assert str(sent.url) == "http://anthropic.test/v1/messages"
    assert sent.headers["x-api-key"] == POOL_KEY
    assert "authorization" not in sent.headers
    # The SDK's own API version is forwarded (relay's default only when none is sent).
    assert sent.headers["anthropic-version"] == client.default_headers["anthropic-version"]
    assert sent.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    body = setup.upstream.last_body
    assert body["model"] == "claude-sonnet-4-5"
    assert body["system"] == "Be nice." and body["max_tokens"] == 256
    metadata = (reply.model_extra or {})["metadata"]
    assert metadata["provider"] == "claude" and metadata["executed_model"] == "claude-sonnet-4-5"
    assert int(metadata["cost_micros"]) == TEXT_ANSWER_COST
    assert await setup.only_charge() == TEXT_ANSWER_COST
    usage = await setup.relay.usage(metadata["request_id"])
    assert usage["endpoint"] == "messages"
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (3012, 9)
    assert (usage["cached_tokens"], usage["cache_write_tokens"]) == (2000, 1000)
    assert usage["upstream_request_id"] == "msg_01FixtureTextAnswer"


async def test_anthropic_sdk_stream_passes_through_and_is_settled(setup: Setup) -> None:
    async with (
        setup.anthropic() as client,
        client.messages.stream(
            model="claude-x", max_tokens=256, messages=[{"role": "user", "content": "Hi"}]
        ) as stream,
    ):
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Hello there, friend!"
    assert final.usage.output_tokens == 15 and final.usage.cache_creation_input_tokens == 100
    assert setup.upstream.last_body["stream"] is True
    assert await setup.only_charge() == STREAM_COST


async def test_raw_stream_ends_with_message_stop_carrying_metadata(setup: Setup) -> None:
    body = {
        "model": "claude-x",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    headers = {"x-api-key": setup.secret, "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(base_url=setup.relay.base_url) as client:
        response = await client.post("/v1/messages", json=body, headers=headers)
    assert response.status_code == 200
    events = [event for event in response.text.split("\n\n") if event.strip()]
    assert events[-1].startswith("event: message_stop\n")
    last = json.loads(events[-1].split("data: ", 1)[1])
    assert int(last["metadata"]["cost_micros"]) == STREAM_COST
    assert last["usage"]["cache_read_input_tokens"] == 400
    assert sum(event.startswith("event: message_stop") for event in events) == 1


async def test_messages_refusals_carry_anthropic_error_type(setup: Setup) -> None:
    async with httpx.AsyncClient(base_url=setup.relay.base_url) as client:
        missing = await client.post("/v1/messages", json={"model": "claude-x"})
        bad_key = await client.post(
            "/v1/messages", json={"model": "claude-x"}, headers={"x-api-key": "rk_nope"}
        )
        # x-api-key is the Messages API's convention only.
        chat = await client.post(
            "/v1/chat/completions",
            json={"model": "claude-x", "messages": [{"role": "user", "content": "x"}]},
            headers={"x-api-key": setup.secret},
        )
    for response in (missing, bad_key):
        assert response.status_code == 401
        assert response.json()["type"] == "error"
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert chat.status_code == 401
    async with setup.anthropic() as client:
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.create(
                model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
    assert setup.upstream.seen == []


async def test_upstream_rejection_reaches_the_anthropic_sdk(setup: Setup) -> None:
    def reject(body: dict[str, Any]) -> httpx.Response:
        error = {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}
        return httpx.Response(400, json=error)

    setup.upstream.reply = reject
    async with setup.anthropic() as client:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.create(
                model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "bad"},
    }
    assert await setup.relay.charges(setup.account_id) == []
    assert setup.relay.state.wallet.snapshot(setup.account_id).held_micros == 0


async def test_messages_dry_run_prices_without_calling_upstream(setup: Setup) -> None:
    body = {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": "x"}]}
    async with httpx.AsyncClient(base_url=setup.relay.base_url) as client:
        response = await client.post(
            "/v1/messages?dryRun=true", json=body, headers={"x-api-key": setup.secret}
        )
    assert response.status_code == 200
    estimate = response.json()["estimate"]
    assert estimate["model"] == "claude-x" and estimate["hold_micros"] > 0
    assert setup.upstream.seen == []


# ----------------------------------------------------------------- /v1/messages, translated


async def test_anthropic_sdk_message_on_an_openai_upstream(setup: Setup) -> None:
    async with setup.anthropic() as client:
        reply = await client.messages.create(
            model="mock-gpt", max_tokens=5, messages=[{"role": "user", "content": "Hello"}]
        )
    assert reply.type == "message" and reply.role == "assistant"
    assert reply.content[0].type == "text"
    assert reply.content[0].text == "Hello from relay's mock model."
    assert reply.stop_reason == "end_turn"
    assert reply.usage.output_tokens == 5 and reply.usage.input_tokens > 0
    metadata = (reply.model_extra or {})["metadata"]
    assert metadata["provider"] == "mock" and int(metadata["cost_micros"]) > 0
    assert await setup.only_charge() == int(metadata["cost_micros"])


async def test_anthropic_sdk_stream_on_an_openai_upstream(setup: Setup) -> None:
    async with (
        setup.anthropic() as client,
        client.messages.stream(
            model="mock-gpt", max_tokens=1024, messages=[{"role": "user", "content": "Hello"}]
        ) as stream,
    ):
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text.startswith("Hello from relay's mock model.")
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0
    assert final.stop_reason == "end_turn"
    charge = await setup.only_charge()
    (row,) = await setup.relay.rows("SELECT * FROM usage WHERE endpoint = 'messages'")
    assert row["cost_micros"] == charge and row["usage_estimated"] == 0
    assert row["completion_tokens"] == final.usage.output_tokens


async def test_a_translated_stream_reports_an_input_estimate_at_message_start(
    setup: Setup,
) -> None:
    body = {
        "model": "mock-gpt",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "Hello " * 50}],
    }
    headers = {"x-api-key": setup.secret, "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(base_url=setup.relay.base_url) as client:
        response = await client.post("/v1/messages", json=body, headers=headers)
    events = [event for event in response.text.split("\n\n") if event.strip()]
    start = json.loads(events[0].split("data: ", 1)[1])
    assert start["type"] == "message_start"
    # anthropic 0.40 keeps message_start's input_tokens: relay's estimate, never 0.
    assert start["message"]["usage"]["input_tokens"] > 50
    delta = next(json.loads(e.split("data: ", 1)[1]) for e in events if "message_delta" in e)
    (row,) = await setup.relay.rows("SELECT * FROM usage WHERE endpoint = 'messages'")
    assert delta["usage"]["input_tokens"] == row["prompt_tokens"]  # the upstream's own count
    assert response.headers["request-id"] == response.headers["x-relay-request-id"]


# ----------------------------------------------------------------- OpenAI chat → Anthropic


async def test_openai_sdk_chat_with_tools_on_an_anthropic_upstream(setup: Setup) -> None:
    setup.upstream.reply = lambda body: streamed(
        200, fixture("anthropic_tool_use.json"), "application/json"
    )
    async with setup.openai() as client:
        reply = await client.chat.completions.create(
            model="claude-x",
            messages=[
                {"role": "system", "content": "Use tools."},
                {"role": "user", "content": "Weather in SF?"},
            ],
            tools=[
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "parameters": {"type": "object", "properties": {}},
                    },
                }
            ],
        )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["location"] == "San Francisco, CA"
    sent = setup.upstream.seen[-1]
    assert str(sent.url) == "http://anthropic.test/v1/messages"
    assert sent.headers["x-api-key"] == POOL_KEY
    body = setup.upstream.last_body
    assert body["system"] == "Use tools." and body["model"] == "claude-sonnet-4-5"
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in SF?"}]}
    ]
    assert body["tools"][0]["input_schema"] == {"type": "object", "properties": {}}
    assert reply.usage is not None and reply.usage.prompt_tokens == 380
    assert await setup.only_charge() == TOOL_ANSWER_COST


async def test_openai_sdk_stream_on_an_anthropic_upstream(setup: Setup) -> None:
    async with setup.openai() as client:
        stream = await client.chat.completions.create(
            model="claude-x",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "Hello there, friend!"
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] == "stop"
    last = chunks[-1]
    assert last.usage is not None and last.usage.prompt_tokens == 525
    assert not last.choices and "metadata" not in (last.model_extra or {})
    finishing = chunks[-2]  # relay's metadata rides on the last chunk with choices
    assert finishing.choices and finishing.choices[0].finish_reason == "stop"
    assert int((finishing.model_extra or {})["metadata"]["cost_micros"]) == STREAM_COST
    # Cache writes are billed at their own price on the translated path too.
    assert await setup.only_charge() == STREAM_COST
    assert setup.upstream.last_body["stream"] is True


async def test_chat_upstream_error_is_translated_to_openai_shape(setup: Setup) -> None:
    def overloaded(body: dict[str, Any]) -> httpx.Response:
        error = {"type": "error", "error": {"type": "invalid_request_error", "message": "too long"}}
        return httpx.Response(400, json=error)

    setup.upstream.reply = overloaded
    async with setup.openai() as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="claude-x", messages=[{"role": "user", "content": "x"}]
            )
    assert caught.value.body == {
        "message": "too long",
        "type": "invalid_request_error",
        "code": "invalid_request_error",
        "param": None,
    }


async def test_count_tokens_answers_offline_and_bills_nothing(setup: Setup) -> None:
    async with setup.anthropic() as client:
        counted = await client.messages.count_tokens(
            model="claude-x", messages=[{"role": "user", "content": "Hello there, Claude"}]
        )
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.count_tokens(
                model="no-such-model", messages=[{"role": "user", "content": "Hi"}]
            )
    assert counted.input_tokens > 0
    assert setup.upstream.seen == []
    assert await setup.relay.charges(setup.account_id) == []


async def test_an_overloaded_anthropic_upstream_is_529_on_messages_and_503_on_chat(
    setup: Setup,
) -> None:
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    setup.upstream.reply = lambda body: httpx.Response(529, json=overloaded)
    async with setup.anthropic() as client:
        with pytest.raises(anthropic.APIStatusError) as info:
            await client.messages.create(
                model="claude-x", max_tokens=16, messages=[{"role": "user", "content": "Hi"}]
            )
    assert info.value.status_code == 529
    assert info.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert info.value.response.headers["request-id"].startswith("req_")
    async with setup.openai() as client:
        with pytest.raises(openai.InternalServerError) as chat_info:
            await client.chat.completions.create(
                model="claude-x", messages=[{"role": "user", "content": "Hi"}]
            )
    assert chat_info.value.status_code == 503
    assert setup.relay.state.wallet.open_hold_count() == 0


# ----------------------------------------------------------------- after message_stop (issue 15)


def _stream_then(tail: Callable[[], AsyncIterator[bytes]]) -> Callable[[Any], httpx.Response]:
    """The fixture stream, then whatever ``tail`` yields after its message_stop."""

    async def body() -> AsyncIterator[bytes]:
        async for piece in _pieces(fixture("anthropic_stream.sse")):
            yield piece
        async for piece in tail():
            yield piece

    def reply(request_body: dict[str, Any]) -> httpx.Response:
        return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    return reply


async def test_native_stream_reads_the_upstream_to_its_end_after_message_stop(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    read_to_end = asyncio.Event()
    late_delta = {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 999}}

    async def trailing() -> AsyncIterator[bytes]:
        yield b'event: ping\ndata: {"type": "ping"}\n\n: keep-alive\n\n'
        yield b"event: message_delta\ndata: " + json.dumps(late_delta).encode() + b"\n\n"
        read_to_end.set()  # only reached when relay read past the trailing bytes

    setup.upstream.reply = _stream_then(trailing)
    async with setup.anthropic() as client:
        async with client.messages.stream(
            model="claude-x", max_tokens=256, messages=[{"role": "user", "content": "Hi"}]
        ) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
    assert text == "Hello there, friend!" and final.usage.output_tokens == 15
    assert read_to_end.is_set()
    # Billed at message_stop; the late usage is an anomaly logged, never a second bill.
    assert await setup.only_charge() == STREAM_COST
    assert "usage after message_stop" in caplog.text


async def test_native_stream_settles_before_the_upstream_finishes(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("relay.api.stream_pass.DRAIN_DEADLINE_S", 10.0)
    recorded = asyncio.Event()

    async def held_open() -> AsyncIterator[bytes]:
        await asyncio.wait_for(recorded.wait(), 10)  # the upstream ends only once billed
        yield b": bye\n\n"

    setup.upstream.reply = _stream_then(held_open)
    body = {"model": "claude-x", "max_tokens": 64, "stream": True, "messages": HI}
    headers = {"x-api-key": setup.secret, "anthropic-version": "2023-06-01"}
    async with (
        httpx.AsyncClient(base_url=setup.relay.base_url, timeout=20) as client,
        client.stream("POST", "/v1/messages", json=body, headers=headers) as response,
    ):
        received = b""
        pieces = response.aiter_bytes()
        async for piece in pieces:
            received += piece
            if b"event: message_stop" in received:
                break
        # The client has every event while the upstream is still open: the charge and
        # its usage row are recorded already (a SIGKILL now loses nothing).
        for _ in range(100):
            rows = await setup.relay.rows("SELECT * FROM usage WHERE endpoint = 'messages'")
            if rows:
                break
            await asyncio.sleep(0.05)
        assert rows and rows[0]["cost_micros"] == STREAM_COST
        recorded.set()
        received += b"".join([piece async for piece in pieces])
    assert received.count(b"event: message_stop") == 1 and b"bye" not in received


async def test_an_upstream_that_keeps_sending_is_cut_at_the_drain_deadline(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("relay.api.stream_pass.DRAIN_DEADLINE_S", 0.3)

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(200):
            yield b": still here\n\n"
            await asyncio.sleep(0.05)

    setup.upstream.reply = _stream_then(endless)
    body = {"model": "claude-x", "max_tokens": 64, "stream": True, "messages": HI}
    headers = {"x-api-key": setup.secret, "anthropic-version": "2023-06-01"}
    started = asyncio.get_running_loop().time()
    async with httpx.AsyncClient(base_url=setup.relay.base_url, timeout=20) as client:
        response = await client.post("/v1/messages", json=body, headers=headers)
    elapsed = asyncio.get_running_loop().time() - started
    assert response.status_code == 200 and elapsed < 5  # not the endless 10 s
    assert response.text.count("event: message_stop") == 1 and "still here" not in response.text
    assert await setup.only_charge() == STREAM_COST


async def test_an_upstream_failing_while_drained_leaves_one_charge_and_no_hold(
    setup: Setup,
) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b'event: ping\ndata: {"type": "ping"}\n\n'
        raise httpx.ReadError("connection reset after message_stop")

    setup.upstream.reply = _stream_then(broken)
    async with setup.anthropic() as client:
        async with client.messages.stream(
            model="claude-x", max_tokens=256, messages=[{"role": "user", "content": "Hi"}]
        ) as stream:
            final = await stream.get_final_message()
    assert final.usage.output_tokens == 15 and final.stop_reason == "end_turn"
    assert await setup.only_charge() == STREAM_COST
    (row,) = await setup.relay.rows("SELECT * FROM usage WHERE endpoint = 'messages'")
    assert row["status"] == 200 and row["usage_estimated"] == 0
    assert setup.relay.state.wallet.open_hold_count() == 0


async def test_openai_sdk_tool_loop_gives_claude_its_signed_thinking_back(setup: Setup) -> None:
    signed = {"type": "thinking", "thinking": "Need the tool.", "signature": "sig-abc"}
    answer = {
        "id": "msg_think",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [signed, {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {}}],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 30,
            "output_tokens": 20,
            "output_tokens_details": {"thinking_tokens": 12},
        },
    }
    setup.upstream.reply = lambda body: httpx.Response(200, json=answer)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    async with setup.openai() as client:
        first = await client.chat.completions.create(
            model="claude-x",
            messages=HI,
            tools=tools,
            reasoning_effort="low",  # type: ignore[arg-type]
        )
        reply = first.choices[0].message
        extra = reply.model_extra or {}
        assert (
            extra["thinking_blocks"] == [signed] and extra["reasoning_content"] == "Need the tool."
        )
        assert first.usage is not None and first.usage.completion_tokens_details is not None
        assert first.usage.completion_tokens_details.reasoning_tokens == 12
        history = [*HI, reply.model_dump(exclude_none=True)]
        history.append({"role": "tool", "tool_call_id": "toolu_9", "content": "done"})
        await client.chat.completions.create(
            model="claude-x",
            messages=history,
            tools=tools,
            reasoning_effort="low",  # type: ignore[arg-type]
        )
    assistant = setup.upstream.last_body["messages"][1]
    assert assistant["content"][0] == signed  # first, ahead of its tool_use
    assert assistant["content"][1]["type"] == "tool_use"
