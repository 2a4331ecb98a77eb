"""Tests for relay.upstream.providers.anthropic_translate, _answers and _stream: OpenAI ↔ Anthropic.

The upstream answers are hand-written fixtures (tests/fixtures/) that mirror the public
shapes of both APIs; streams are fed in awkward cuts to prove events may span chunks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from relay.upstream.providers.anthropic_answers import (
    anthropic_error,
    anthropic_usage,
    chat_answer_to_message,
    message_to_chat_answer,
    openai_error,
    openai_usage,
)
from relay.upstream.providers.anthropic_stream import (
    ChatToMessagesStream,
    MessagesToChatStream,
    SseBuffer,
)
from relay.upstream.providers.anthropic_translate import (
    DEFAULT_MAX_TOKENS,
    chat_request_to_messages,
    messages_request_to_chat,
)

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(fixture(name))
    return payload


def feed_in_pieces(translator: Any, raw: bytes, size: int) -> bytes:
    out = b"".join(translator.feed(raw[i : i + size]) for i in range(0, len(raw), size))
    return out + bytes(translator.finish())


def data_events(body: bytes) -> list[Any]:
    """The decoded data of an OpenAI stream ("[DONE]" kept as the string)."""
    events = []
    for event in body.decode().split("\n\n"):
        if event.startswith("data: "):
            data = event[6:]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def named_events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, decoded data) of an Anthropic stream."""
    result = []
    for event in body.decode().split("\n\n"):
        if not event.strip():
            continue
        name_line, data_line = event.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        result.append((name_line[7:], json.loads(data_line[6:])))
    return result


# ----------------------------------------------------------------- requests


def test_chat_request_becomes_messages_with_system_images_and_tools() -> None:
    chat = {
        "model": "claude-x",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is here?"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "look", "arguments": '{"zoom": 2}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
            {"role": "user", "content": "Thanks"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "look",
                    "description": "Look closer",
                    "parameters": {"type": "object", "properties": {"zoom": {"type": "integer"}}},
                },
            }
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "stop": "END",
        "temperature": 1.5,
        "stream": True,
    }
    request = chat_request_to_messages(chat, "claude-sonnet-4-5")
    assert request["model"] == "claude-sonnet-4-5"
    assert request["system"] == "Be brief.\n\nUse metric."
    assert request["max_tokens"] == DEFAULT_MAX_TOKENS
    assert request["stream"] is True
    assert request["stop_sequences"] == ["END"]
    assert request["temperature"] == 1  # clamped to Anthropic's range
    assert request["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert request["tools"] == [
        {
            "name": "look",
            "description": "Look closer",
            "input_schema": {"type": "object", "properties": {"zoom": {"type": "integer"}}},
        }
    ]
    user, assistant, results = request["messages"]
    assert user["role"] == "user"
    assert user["content"] == [
        {"type": "text", "text": "What is here?"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
    ]
    assert assistant == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "call_1", "name": "look", "input": {"zoom": 2}}],
    }
    # The tool result and the next user message share one user turn, result first.
    assert results == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "a cat"},
            {"type": "text", "text": "Thanks"},
        ],
    }


def test_chat_max_tokens_and_named_tool_choice_carry_over() -> None:
    chat = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 77,
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "user": "u-1",
    }
    request = chat_request_to_messages(chat, "up")
    assert request["max_tokens"] == 77
    assert request["tool_choice"] == {"type": "tool", "name": "f"}
    assert request["tools"][0]["input_schema"] == {"type": "object", "properties": {}}
    assert request["metadata"] == {"user_id": "u-1"}
    assert "system" not in request and "stream" not in request


def test_messages_request_becomes_chat_with_tool_results_first() -> None:
    messages = {
        "model": "gpt",
        "max_tokens": 300,
        "system": [
            {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}
        ],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "weather",
                        "input": {"q": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "18C"}],
                    },
                    {"type": "text", "text": "And a picture:"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
                    },
                ],
            },
        ],
        "tools": [
            {"name": "weather", "description": "Weather", "input_schema": {"type": "object"}},
        ],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "stop_sequences": ["###"],
        "stream": True,
    }
    request = messages_request_to_chat(messages, "gpt-4o-mini")
    assert request["model"] == "gpt-4o-mini"
    assert request["max_tokens"] == 300
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}
    assert request["stop"] == ["###"]
    assert request["tool_choice"] == "auto" and request["parallel_tool_calls"] is False
    assert request["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "parameters": {"type": "object"},
                "description": "Weather",
            },
        }
    ]
    system, user, assistant, tool, last = request["messages"]
    assert system == {"role": "system", "content": "You are terse."}
    assert user == {"role": "user", "content": "Weather in Paris?"}
    assert assistant == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"q":"Paris"}'},
            }
        ],
    }
    assert tool == {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"}
    assert last == {
        "role": "user",
        "content": [
            {"type": "text", "text": "And a picture:"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
        ],
    }


def test_anthropic_tool_choice_any_and_tool_map_to_openai() -> None:
    base = {
        "model": "m",
        "max_tokens": 5,
        "messages": [],
        "tools": [{"name": "f", "input_schema": {}}],
    }
    any_choice = messages_request_to_chat({**base, "tool_choice": {"type": "any"}}, "u")
    assert any_choice["tool_choice"] == "required"
    named = messages_request_to_chat({**base, "tool_choice": {"type": "tool", "name": "f"}}, "u")
    assert named["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    url_image = messages_request_to_chat(
        {
            **base,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}
                    ],
                }
            ],
        },
        "u",
    )
    assert url_image["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}}
    ]


# ----------------------------------------------------------------- answers and usage


def test_anthropic_answer_becomes_chat_completion_with_cache_usage() -> None:
    answer = message_to_chat_answer(fixture_json("anthropic_message.json"))
    assert answer["id"] == "msg_01FixtureTextAnswer"
    assert answer["object"] == "chat.completion"
    choice = answer["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello! How can I help you today?"}
    assert choice["finish_reason"] == "stop"
    # prompt = input + cache reads + cache writes (relay.money.pricing's convention).
    assert answer["usage"] == {
        "prompt_tokens": 3012,
        "completion_tokens": 9,
        "total_tokens": 3021,
        "prompt_tokens_details": {"cached_tokens": 2000, "cache_write_tokens": 1000},
    }


def test_anthropic_tool_use_becomes_tool_calls() -> None:
    answer = message_to_chat_answer(fixture_json("anthropic_tool_use.json"))
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me check the weather."
    (call,) = choice["message"]["tool_calls"]
    assert call["id"] == "toolu_01A09q90qw90lq917835lq9"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {
        "location": "San Francisco, CA",
        "unit": "celsius",
    }


def test_openai_tool_calls_become_tool_use_with_cached_usage() -> None:
    message = chat_answer_to_message(fixture_json("openai_chat_tool_calls.json"))
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["stop_reason"] == "tool_use"
    assert message["content"] == [
        {
            "type": "tool_use",
            "id": "call_abc123",
            "name": "get_weather",
            "input": {"location": "Paris"},
        }
    ]
    assert message["usage"] == {
        "input_tokens": 176,
        "output_tokens": 17,
        "cache_read_input_tokens": 1024,
        "cache_creation_input_tokens": 0,
        # The fixture's completion_tokens_details.reasoning_tokens, in Anthropic's field.
        "output_tokens_details": {"thinking_tokens": 0},
    }


@pytest.mark.parametrize(
    ("finish", "stop"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal")],
)
def test_finish_reasons_map_to_stop_reasons(finish: str, stop: str) -> None:
    answer = {"choices": [{"message": {"content": "x"}, "finish_reason": finish}]}
    assert chat_answer_to_message(answer)["stop_reason"] == stop
    back = message_to_chat_answer({"content": [], "stop_reason": stop})
    assert back["choices"][0]["finish_reason"] == ("stop" if finish == "stop" else finish)


def test_usage_round_trips_between_conventions() -> None:
    anthropic = {
        "input_tokens": 10,
        "output_tokens": 4,
        "cache_read_input_tokens": 30,
        "cache_creation_input_tokens": 60,
    }
    assert anthropic_usage(openai_usage(anthropic)) == anthropic


def test_errors_translate_both_ways_and_leave_other_bodies_alone() -> None:
    openai_shaped = b'{"error": {"message": "bad model", "type": "invalid_request_error"}}'
    assert json.loads(anthropic_error(openai_shaped)) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "bad model"},
    }
    anthropic_shaped = (
        b'{"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}'
    )
    assert json.loads(openai_error(anthropic_shaped))["error"] == {
        "message": "busy",
        "type": "overloaded_error",
        "code": "overloaded_error",
        "param": None,
    }
    assert anthropic_error(b"<html>oops</html>") == b"<html>oops</html>"


# ----------------------------------------------------------------- streams


def test_sse_buffer_joins_events_cut_anywhere() -> None:
    raw = fixture("anthropic_stream.sse")
    buffer = SseBuffer()
    events = [event for i in range(len(raw)) for event in buffer.feed(raw[i : i + 1])]
    names = [event.name for event in events]
    assert names[0] == "message_start" and names[-1] == "message_stop" and "ping" in names
    assert b"".join(event.raw for event in events) == raw


@pytest.mark.parametrize("piece", [1, 7, 64, 10_000])
def test_anthropic_stream_becomes_openai_chunks_with_usage_chunk(piece: int) -> None:
    out = feed_in_pieces(MessagesToChatStream(), fixture("anthropic_stream.sse"), piece)
    events = data_events(out)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": 525,
        "completion_tokens": 15,
        "total_tokens": 540,
        "prompt_tokens_details": {"cached_tokens": 400, "cache_write_tokens": 100},
    }
    chunks = events[:-2]
    assert all(chunk["id"] == "msg_01FixtureStream" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    assert text == "Hello there, friend!"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_anthropic_tool_stream_becomes_tool_call_deltas() -> None:
    out = feed_in_pieces(MessagesToChatStream(), fixture("anthropic_tool_stream.sse"), 50)
    chunks = [event for event in data_events(out) if event != "[DONE]" and event["choices"]]
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    reasoning = "".join(delta.get("reasoning_content") or "" for delta in deltas)
    assert reasoning == "The user wants weather."
    calls = [call for delta in deltas for call in delta.get("tool_calls") or []]
    assert calls[0]["id"] == "toolu_01T1x1fJ34qAmk2tNTrN7Up6"
    assert calls[0]["function"]["name"] == "get_weather"
    assert all(call["index"] == 0 for call in calls)
    arguments = "".join(call["function"]["arguments"] for call in calls)
    assert json.loads(arguments) == {"location": "San Francisco, CA"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_anthropic_stream_error_event_becomes_openai_error() -> None:
    raw = (
        b"event: error\n"
        b'data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )
    (event,) = data_events(MessagesToChatStream().feed(raw))
    assert event["error"]["type"] == "overloaded_error"


def test_a_broken_anthropic_stream_sends_no_made_up_usage() -> None:
    raw = fixture("anthropic_stream.sse")
    translator = MessagesToChatStream()
    out = translator.feed(raw[: raw.index(b"event: message_delta")]) + translator.finish()
    events = data_events(out)
    assert "[DONE]" not in events and all(event.get("usage") is None for event in events)


@pytest.mark.parametrize("piece", [1, 13, 10_000])
def test_openai_stream_becomes_anthropic_events(piece: int) -> None:
    out = feed_in_pieces(ChatToMessagesStream(), fixture("openai_chat_stream.sse"), piece)
    events = named_events(out)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(payload["type"] == name for name, payload in events)
    start = events[0][1]["message"]
    assert start["id"] == "chatcmpl-FixtureStream" and start["role"] == "assistant"
    text = "".join(
        payload["delta"]["text"]
        for name, payload in events
        if name.endswith("delta") and "text" in payload.get("delta", {})
    )
    assert text == "Bonjour le monde"
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"]["input_tokens"] == 40 and delta["usage"]["output_tokens"] == 4


def test_openai_tool_stream_becomes_tool_use_block() -> None:
    out = feed_in_pieces(ChatToMessagesStream(), fixture("openai_tool_stream.sse"), 40)
    events = named_events(out)
    starts = [payload for name, payload in events if name == "content_block_start"]
    assert starts == [
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {
                "type": "tool_use",
                "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA",
                "name": "get_weather",
                "input": {},
            },
        }
    ]
    partial = "".join(
        payload["delta"]["partial_json"]
        for name, payload in events
        if name == "content_block_delta"
    )
    assert json.loads(partial) == {"location": "Paris"}
    delta = [payload for name, payload in events if name == "message_delta"][0]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"] == {
        "input_tokens": 21,
        "output_tokens": 18,
        "cache_read_input_tokens": 64,
        "cache_creation_input_tokens": 0,
    }


def test_openai_stream_error_becomes_error_event() -> None:
    raw = b'data: {"error": {"message": "rate limited", "type": "rate_limit_error"}}\n\n'
    ((name, payload),) = named_events(ChatToMessagesStream().feed(raw))
    assert name == "error"
    assert payload == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "rate limited"},
    }


def test_openai_stream_without_done_is_closed_after_its_finish_reason() -> None:
    raw = fixture("openai_chat_stream.sse").replace(b"data: [DONE]\n\n", b"")
    translator = ChatToMessagesStream()
    out = translator.feed(raw) + translator.finish()
    assert named_events(out)[-1][0] == "message_stop"
    cut = ChatToMessagesStream()
    assert cut.finish() == b""
