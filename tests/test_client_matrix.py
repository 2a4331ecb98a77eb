"""The client matrix: real client packages drive a real relay (127.0.0.1) against
recording fake upstreams of both kinds, and each translated field is compared with what
the fake received (issue 15).

Clients: the ``openai`` SDK (sync, in a thread, and async), the ``anthropic`` SDK,
``langchain-openai`` and ``litellm``. Upstreams: a fake OpenAI (chat completions and the
Responses API) and a fake Anthropic (Messages), both ``httpx.MockTransport``s that record
every request; the ``mock`` provider answers in-process. Everything runs offline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pydantic
import pytest
from conftest import make_config
from support_accounts import Relay, run_relay

from relay.config import ProviderConfig
from relay.upstream.client import HttpxUpstream, UpstreamClient
from relay.upstream.providers import ClientFactory, default_client_factory

FIXTURES = Path(__file__).parent / "fixtures"
EXTRA = """
[[providers]]
name = "claude"
kind = "anthropic"
base_url = "http://anthropic.test/v1"
api_keys = ["sk-ant-pool"]
max_attempts = 1

[[models]]
name = "claude-x"
routes = ["claude:claude-sonnet-4-5"]
input_usd_per_mtok = "3"
output_usd_per_mtok = "15"
max_output_tokens = 8192

[[models]]
name = "mock-video"
kind = "video"
routes = ["mock:mock-video"]
usd_per_video_second = "0.10"
"""
PERSON = {"name": "Ada", "age": 36}
CHAT_USAGE = {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}


class Person(pydantic.BaseModel):
    name: str
    age: int


@dataclass
class Seen:
    method: str
    path: str
    headers: httpx.Headers
    body: dict[str, Any]


def _sse(events: list[dict[str, Any]], named: bool = False) -> bytes:
    out = b""
    for event in events:
        name = f"event: {event['type']}\n".encode() if named else b""
        out += name + b"data: " + json.dumps(event).encode() + b"\n\n"
    return out


def _chat_stream(body: dict[str, Any]) -> bytes:
    base = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "up"}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    if (body.get("stream_options") or {}).get("include_usage"):
        chunks.append({**base, "choices": [], "usage": CHAT_USAGE})
    return _sse(chunks) + b"data: [DONE]\n\n"


def _response_object(status: str = "completed") -> dict[str, Any]:
    message = {
        "type": "message",
        "id": "msg_up",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "Hello", "annotations": []}],
    }
    return {
        "id": "resp_up",
        "object": "response",
        "created_at": 1,
        "status": status,
        "model": "gpt-4o-mini",
        "output": [message] if status == "completed" else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "metadata": {"upstream_tag": "kept"},
        "usage": {
            "input_tokens": 9,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 2,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 11,
        },
    }


@dataclass
class Upstreams:
    """The recording fakes; ``seen`` lists every request either of them received."""

    seen: list[Seen] = field(default_factory=list)

    def last(self, path_end: str) -> Seen:
        return [seen for seen in self.seen if seen.path.endswith(path_end)][-1]

    async def _openai(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(await request.aread() or b"{}")
        self.seen.append(Seen(request.method, request.url.path, request.headers, body))
        path = request.url.path
        if path.endswith("/chat/completions"):
            if body.get("stream"):
                return _stream_reply(_chat_stream(body))
            message = {"role": "assistant", "content": "Hello"}
            answer = {
                "id": "chatcmpl-up",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": CHAT_USAGE,
                "metadata": {"upstream_tag": "kept"},
            }
            return httpx.Response(200, json=answer)
        if path.endswith("/responses") and body.get("stream"):
            created = {"type": "response.created", "sequence_number": 0}
            created["response"] = _response_object("in_progress")
            delta = {
                "type": "response.output_text.delta",
                "sequence_number": 1,
                "item_id": "msg_up",
                "output_index": 0,
                "content_index": 0,
                "delta": "Hello",
                "logprobs": [],
            }
            done = {"type": "response.completed", "sequence_number": 2}
            done["response"] = _response_object()
            return _stream_reply(_sse([created, delta, done], named=True))
        if "/responses" in path:
            return httpx.Response(200, json=_response_object())
        return httpx.Response(404, json={"error": {"message": "no", "type": "x", "code": "x"}})

    async def _anthropic(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(await request.aread() or b"{}")
        self.seen.append(Seen(request.method, request.url.path, request.headers, body))
        if body.get("stream"):
            return _stream_reply((FIXTURES / "anthropic_stream.sse").read_bytes())
        structured = "output_config" in body
        text = json.dumps(PERSON) if structured else "Hello"
        return httpx.Response(
            200,
            json={
                "id": "msg_up",
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 20, "output_tokens": 6},
            },
        )

    def factory(self) -> ClientFactory:
        def build(config: ProviderConfig) -> UpstreamClient:
            if config.kind == "mock":
                return default_client_factory(config)
            handler = self._anthropic if config.kind == "anthropic" else self._openai
            return HttpxUpstream(httpx.AsyncClient(transport=httpx.MockTransport(handler)))

        return build


def _stream_reply(data: bytes) -> httpx.Response:
    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 61):
            yield data[start : start + 61]

    return httpx.Response(200, content=pieces(), headers={"content-type": "text/event-stream"})


@dataclass
class Matrix:
    relay: Relay
    upstreams: Upstreams
    secret: str

    @property
    def v1(self) -> str:
        return self.relay.base_url + "/v1"

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.v1, api_key=self.secret, max_retries=0, http_client=httpx.AsyncClient()
        )

    def anthropic(self) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            base_url=self.relay.base_url, api_key=self.secret, max_retries=0
        )


@pytest.fixture
async def matrix(tmp_path: Path, admin_token: str) -> AsyncIterator[Matrix]:
    upstreams = Upstreams()
    config = make_config(
        tmp_path,
        upstream_url="http://openai.test/v1",
        provider_extra="responses_api = true",  # like api.openai.com
        extra=EXTRA,
    )
    async with run_relay(config, client_factory=upstreams.factory()) as relay:
        _, key = await relay.funded_key("matrix")
        yield Matrix(relay, upstreams, key["secret"])


@pytest.fixture
def strict_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ----------------------------------------------------------------- openai SDK, sync


def _sync_chat_loop(base_url: str, key: str, model: str) -> tuple[str, list[str], str | None]:
    """The everyday loop: ``chunk.choices[0]`` on every chunk, to the end of the stream."""
    with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        text = ""
        costs = []
        for chunk in stream:
            text += chunk.choices[0].delta.content or ""
            metadata = (chunk.model_extra or {}).get("metadata")
            if metadata:
                costs.append(metadata["cost"])
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}]
        )
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            reply.model_dump_json()
        return text, costs, reply._request_id


@pytest.mark.parametrize("model", ["fake-gpt", "claude-x", "mock-gpt"])
async def test_sync_sdk_stream_loop_runs_to_the_end(matrix: Matrix, model: str) -> None:
    text, costs, request_id = await asyncio.to_thread(
        _sync_chat_loop, matrix.v1, matrix.secret, model
    )
    assert text.startswith("Hel")
    assert len(costs) == 1 and isinstance(costs[0], str)  # on the last chunk with choices
    assert request_id is not None and request_id.startswith("req_")


# ----------------------------------------------------------------- openai SDK, async


async def test_chat_translated_to_claude_keeps_every_field(
    matrix: Matrix, strict_warnings: None
) -> None:
    async with matrix.openai() as client:
        reply = await client.chat.completions.create(
            model="claude-x",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ],
            max_completion_tokens=3000,
            stop=["END"],
            tools=[
                {
                    "type": "function",
                    "function": {"name": "f", "parameters": {"type": "object"}},
                }
            ],
            reasoning_effort="low",
        )
    sent = matrix.upstreams.last("/messages").body
    assert sent["model"] == "claude-sonnet-4-5" and sent["system"] == "Be brief."
    assert sent["max_tokens"] == 3000
    assert sent["stop_sequences"] == ["END"]
    assert sent["tools"] == [{"name": "f", "input_schema": {"type": "object"}}]
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    assert reply.choices[0].message.content == "Hello"
    assert reply.usage is not None and (
        reply.usage.prompt_tokens,
        reply.usage.completion_tokens,
    ) == (
        20,
        6,
    )
    metadata = reply.metadata or {}
    assert isinstance(metadata["cost"], str) and metadata["cost_micros"] == str(20 * 3 + 6 * 15)
    assert reply._request_id == metadata["request_id"]
    reply.model_dump_json()  # clean under warnings-as-errors


async def test_parse_with_a_json_schema_through_claude_returns_the_object(
    matrix: Matrix, strict_warnings: None
) -> None:
    async with matrix.openai() as client:
        completion = await client.chat.completions.parse(
            model="claude-x",
            messages=[{"role": "user", "content": "Who?"}],
            response_format=Person,
            temperature=0.5,
        )
    assert completion.choices[0].message.parsed == Person(**PERSON)
    sent = matrix.upstreams.last("/messages").body
    assert sent["temperature"] == 0.5
    assert sent["output_config"]["format"]["type"] == "json_schema"
    assert sent["output_config"]["format"]["schema"]["properties"].keys() == {"name", "age"}


@pytest.mark.parametrize(
    ("extra", "named"),
    [({"n": 2}, "n"), ({"logprobs": True}, "logprobs"), ({"seed": 7}, "seed")],
)
async def test_what_claude_cannot_do_is_refused_by_name(
    matrix: Matrix, extra: dict[str, Any], named: str
) -> None:
    async with matrix.openai() as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model="claude-x",
                messages=[{"role": "user", "content": "Hi"}],
                **extra,
            )
    assert refused.value.body["param"] == named  # type: ignore[index]
    assert not any(seen.path.endswith("/messages") for seen in matrix.upstreams.seen)


async def test_openai_sdk_files_cache_control_and_thinking_history_reach_claude(
    matrix: Matrix, strict_warnings: None
) -> None:
    pdf = base64.b64encode(b"%PDF-1.4 relay").decode()
    cache = {"type": "ephemeral"}
    signed = {"type": "thinking", "thinking": "Plan.", "signature": "sig-9"}
    async with matrix.openai() as client:
        await client.chat.completions.create(
            model="claude-x",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Read", "cache_control": cache},  # type: ignore[typeddict-unknown-key]
                        {
                            "type": "file",
                            "file": {
                                "file_data": f"data:application/pdf;base64,{pdf}",
                                "filename": "a.pdf",
                            },
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "t1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                    "thinking_blocks": [signed],  # type: ignore[typeddict-unknown-key]
                },
                {"role": "tool", "tool_call_id": "t1", "content": "ok"},
            ],
            tools=[
                {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
            ],
            max_completion_tokens=3000,
            extra_body={"thinking": {"type": "enabled", "budget_tokens": 2048}},
        )
    sent = matrix.upstreams.last("/messages").body
    user, assistant, result = sent["messages"]
    assert user["content"] == [
        {"type": "text", "text": "Read", "cache_control": cache},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": pdf},
            "title": "a.pdf",
        },
    ]
    assert assistant["content"] == [
        signed,
        {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
    ]
    assert result["content"][0]["type"] == "tool_result"
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 2048}


async def test_openai_sdk_file_id_towards_claude_is_refused_by_name(matrix: Matrix) -> None:
    async with matrix.openai() as client:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model="claude-x",
                messages=[
                    {"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}
                ],
            )
    assert refused.value.body["param"] == "file_id"  # type: ignore[index]


async def test_openai_metadata_merges_with_the_upstreams(matrix: Matrix) -> None:
    async with matrix.openai() as client:
        reply = await client.chat.completions.create(
            model="fake-gpt", messages=[{"role": "user", "content": "Hi"}]
        )
    raw = reply.metadata or {}
    assert raw["upstream_tag"] == "kept" and raw["provider"] == "fake"
    assert raw["executed_model"] == "gpt-4o-mini" and raw["upstream_id"] == "chatcmpl-up"
    assert matrix.upstreams.last("/chat/completions").body["model"] == "gpt-4o-mini"


async def test_responses_native_pass_through_plain_streamed_and_retrieved(
    matrix: Matrix, strict_warnings: None
) -> None:
    async with matrix.openai() as client:
        response = await client.responses.create(
            model="fake-gpt", input="Hi", previous_response_id="resp_prev", max_output_tokens=99
        )
        sent = matrix.upstreams.last("/responses")
        assert sent.path == "/v1/responses" and sent.body["model"] == "gpt-4o-mini"
        assert sent.body["previous_response_id"] == "resp_prev"
        assert sent.body["max_output_tokens"] == 99 and sent.body["input"] == "Hi"
        assert response.output_text == "Hello"
        metadata = response.metadata or {}
        assert metadata["upstream_tag"] == "kept" and metadata["cost_micros"].isdigit()
        response.model_dump_json()

        stream = await client.responses.create(model="fake-gpt", input="Hi", stream=True)
        events = [event async for event in stream]
        assert [event.type for event in events][-1] == "response.completed"
        final = events[-1].response  # type: ignore[union-attr]
        assert final.output_text == "Hello" and isinstance((final.metadata or {})["cost"], str)

        retrieved = await client.responses.retrieve(response.id)
        assert retrieved.id == "resp_up"
        assert matrix.upstreams.last("/responses/resp_up").method == "GET"
    rows = await matrix.relay.rows("SELECT * FROM usage WHERE endpoint = 'responses'")
    assert [(row["prompt_tokens"], row["completion_tokens"]) for row in rows] == [(9, 2), (9, 2)]


async def test_another_account_cannot_retrieve_a_response(matrix: Matrix) -> None:
    async with matrix.openai() as client:
        response = await client.responses.create(model="fake-gpt", input="Hi")
    await asyncio.sleep(0.1)  # the usage row that proves ownership is flushed
    _, other = await matrix.relay.funded_key("someone-else")
    async with openai.AsyncOpenAI(
        base_url=matrix.v1, api_key=other["secret"], max_retries=0
    ) as client:
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(response.id)


async def test_responses_translated_to_claude(matrix: Matrix, strict_warnings: None) -> None:
    async with matrix.openai() as client:
        response = await client.responses.create(
            model="claude-x", input="Hi", instructions="Be brief.", max_output_tokens=200
        )
        stream = await client.responses.create(model="claude-x", input="Hi", stream=True)
        events = [event async for event in stream]
    sent = [seen.body for seen in matrix.upstreams.seen if seen.path.endswith("/messages")]
    assert sent[0]["system"] == "Be brief." and sent[0]["max_tokens"] == 200
    assert sent[0]["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    assert response.output_text == "Hello"
    assert response.usage is not None and response.usage.input_tokens == 20
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == "Hello there, friend!"
    assert final.usage is not None and final.usage.output_tokens == 15
    response.model_dump_json()


async def test_models_retrieve_in_both_sdks(matrix: Matrix) -> None:
    async with matrix.openai() as client:
        model = await client.models.retrieve("claude-x")
    assert model.id == "claude-x" and model.object == "model"
    async with matrix.anthropic() as client:
        info = await client.models.retrieve("claude-x")
        listed = await client.models.list()
    assert info.id == "claude-x" and info.type == "model"
    assert "claude-x" in [m.id for m in listed.data]


async def test_sdk_videos_create_sends_multipart_and_works(matrix: Matrix) -> None:
    async with matrix.openai() as client:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the SDK's own Sora notice
            video = await client.videos.create(model="mock-video", prompt="a cat", seconds="4")
    assert video.status == "queued" and video.id.startswith("video_")
    assert (video.metadata or {})["cost_estimate"] == "0.4"  # type: ignore[attr-defined]


# ----------------------------------------------------------------- anthropic SDK


async def test_anthropic_sdk_on_an_openai_upstream_translates_every_field(
    matrix: Matrix,
) -> None:
    async with matrix.anthropic() as client:
        message = await client.messages.create(
            model="fake-gpt",
            system="Be brief.",
            max_tokens=64,
            stop_sequences=["END"],
            messages=[{"role": "user", "content": "Hi"}],
            tools=[{"name": "f", "input_schema": {"type": "object"}}],
        )
    sent = matrix.upstreams.last("/chat/completions").body
    assert sent["model"] == "gpt-4o-mini" and sent["max_tokens"] == 64
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert sent["stop"] == ["END"]
    assert sent["tools"][0]["function"]["name"] == "f"
    assert message.content[0].text == "Hello"  # type: ignore[union-attr]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 4)
    assert message._request_id is not None


async def test_anthropic_stream_helper_on_claude(matrix: Matrix) -> None:
    async with matrix.anthropic() as client:
        async with client.messages.stream(
            model="claude-x", max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
        ) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
    assert text == "Hello there, friend!" and final.usage.output_tokens == 15
    assert matrix.upstreams.last("/messages").body["stream"] is True
    # relay's cost reaches the helper's final message (docs/architecture.md §6.4).
    details = final.usage.output_tokens_details
    assert details is not None and details.thinking_tokens == 0
    (row,) = await matrix.relay.rows("SELECT cost_micros FROM usage WHERE endpoint = 'messages'")
    assert details.cost_micros == str(row["cost_micros"]) and row["cost_micros"] > 0  # type: ignore[attr-defined]
    assert details.cost == row["cost_micros"] / 1_000_000  # type: ignore[attr-defined]
    final.model_dump_json(warnings="error")


async def test_anthropic_stream_helper_on_an_openai_upstream(matrix: Matrix) -> None:
    async with matrix.anthropic() as client:
        raw_start: list[int] = []
        async with client.messages.stream(
            model="fake-gpt", max_tokens=64, messages=[{"role": "user", "content": "Hi " * 40}]
        ) as stream:
            async for event in stream:
                if event.type == "message_start":
                    raw_start.append(event.message.usage.input_tokens)
            final = await stream.get_final_message()
    assert raw_start[0] > 0  # relay's prompt estimate: OpenAI reports usage only at the end
    assert final.usage.input_tokens == CHAT_USAGE["prompt_tokens"]  # then the upstream's count
    assert final.content[0].text == "Hello"  # type: ignore[union-attr]
    details = final.usage.output_tokens_details
    (row,) = await matrix.relay.rows("SELECT cost_micros FROM usage WHERE endpoint = 'messages'")
    assert details is not None and details.cost_micros == str(row["cost_micros"])  # type: ignore[attr-defined]


async def test_anthropic_sdk_documents_thinking_and_tool_errors_reach_openai(
    matrix: Matrix,
) -> None:
    pdf = base64.b64encode(b"%PDF-1.4 relay").decode()
    async with matrix.anthropic() as client:
        await client.messages.create(
            model="fake-gpt",
            max_tokens=5000,
            thinking={"type": "enabled", "budget_tokens": 4096},
            output_config={"format": {"type": "json_schema", "schema": Person.model_json_schema()}},
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "title": "cv.pdf",
                            "source": {
                                "type": "base64",
                                "media_type": "application/pdf",
                                "data": pdf,
                            },
                            "cache_control": {"type": "ephemeral"},
                        }
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "Read it.", "signature": "sig"},
                        {"type": "tool_use", "id": "t1", "name": "read", "input": {}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": "EIO",
                            "is_error": True,
                        }
                    ],
                },
            ],
            tools=[{"name": "read", "input_schema": {"type": "object"}}],
        )
    sent = matrix.upstreams.last("/chat/completions").body
    user, assistant, tool = sent["messages"]
    assert user["content"] == [
        {
            "type": "file",
            "file": {"file_data": f"data:application/pdf;base64,{pdf}", "filename": "cv.pdf"},
        }
    ]
    assert assistant["reasoning_content"] == "Read it."
    assert tool == {"role": "tool", "tool_call_id": "t1", "content": "Error: EIO"}
    assert sent["reasoning_effort"] == "medium"
    assert sent["response_format"]["json_schema"]["schema"]["required"] == ["name", "age"]


async def test_anthropic_sdk_server_tool_on_an_openai_model_is_refused(matrix: Matrix) -> None:
    async with matrix.anthropic() as client:
        with pytest.raises(anthropic.BadRequestError) as refused:
            await client.messages.create(
                model="fake-gpt",
                max_tokens=64,
                messages=[{"role": "user", "content": "Hi"}],
                tools=[{"type": "web_search_20250305", "name": "web_search"}],
            )
    assert "web_search_20250305" in refused.value.message
    assert not any(seen.path.endswith("/chat/completions") for seen in matrix.upstreams.seen)


# ----------------------------------------------------------------- langchain-openai, litellm


@contextlib.asynccontextmanager
async def _langchain_clients() -> AsyncIterator[dict[str, Any]]:
    """HTTP clients the test owns and closes (ChatOpenAI would leave its own open)."""
    async with httpx.AsyncClient() as async_client:
        with httpx.Client() as sync_client:
            yield {"http_async_client": async_client, "http_client": sync_client}


async def test_langchain_openai_invokes_and_streams(matrix: Matrix) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    async with _langchain_clients() as clients:
        chat = langchain_openai.ChatOpenAI(
            model="fake-gpt", base_url=matrix.v1, api_key=matrix.secret, max_retries=0, **clients
        )
        reply = await chat.ainvoke("Hi")
        pieces = [piece.content async for piece in chat.astream("Hi")]
    assert reply.content == "Hello"
    assert "".join(str(piece) for piece in pieces) == "Hello"
    assert matrix.upstreams.last("/chat/completions").body["messages"] == [
        {"role": "user", "content": "Hi"}
    ]


async def test_langchain_structured_output_through_claude(matrix: Matrix) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    async with _langchain_clients() as clients:
        chat = langchain_openai.ChatOpenAI(
            model="claude-x", base_url=matrix.v1, api_key=matrix.secret, max_retries=0, **clients
        )
        structured = chat.with_structured_output(Person, method="json_schema")
        person = await structured.ainvoke("Who?")
    assert person == Person(**PERSON)
    assert "output_config" in matrix.upstreams.last("/messages").body


async def test_litellm_as_a_client(matrix: Matrix, monkeypatch: pytest.MonkeyPatch) -> None:
    # Offline: litellm must not fetch its model price map from the internet.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    with warnings.catch_warnings():
        # litellm's own warnings (pydantic TypedDict notices at import and lazy import).
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        await _drive_litellm(matrix)


async def _drive_litellm(matrix: Matrix) -> None:
    litellm = pytest.importorskip("litellm")
    reply = await litellm.acompletion(
        model="openai/fake-gpt",
        api_base=matrix.v1,
        api_key=matrix.secret,
        messages=[{"role": "user", "content": "Hi"}],
    )
    assert reply.choices[0].message.content == "Hello"
    stream = await litellm.acompletion(
        model="openai/claude-x",
        api_base=matrix.v1,
        api_key=matrix.secret,
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
    )
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
    assert text == "Hello there, friend!"
    assert matrix.upstreams.last("/chat/completions").body["model"] == "gpt-4o-mini"
