"""Tests for relay.upstream.providers.anthropic_params and anthropic_parts: every request field
of both SDKs is mapped, a documented no-op or refused by name; parts, thinking history,
is_error, reasoning tokens and stop sequences survive translation both ways.

The SDK field lists come from the installed packages' typed dicts, so an SDK upgrade that
adds a field fails ``test_every_sdk_create_field_is_classified`` until it is classified.
"""

from __future__ import annotations

import json
import typing
from typing import Any

import pytest
from anthropic.types import content_block_param, message_create_params
from openai.types.chat import chat_completion_content_part_param, completion_create_params

from relay.errors import InvalidRequest
from relay.upstream.providers.anthropic_answers import (
    chat_answer_to_message,
    message_to_chat_answer,
)
from relay.upstream.providers.anthropic_params import (
    CHAT_IGNORED,
    CHAT_MAPPED,
    CHAT_REFUSED,
    MESSAGES_IGNORED,
    MESSAGES_MAPPED,
    MESSAGES_REFUSED,
)
from relay.upstream.providers.anthropic_stream import ChatToMessagesStream, MessagesToChatStream
from relay.upstream.providers.anthropic_translate import (
    TOOL_ERROR_PREFIX,
    chat_request_to_messages,
    messages_request_to_chat,
)
from relay.upstream.providers.responses_translate import responses_request_to_chat

PDF_B64 = "JVBERi0xLjQK"
HI = [{"role": "user", "content": "Hi"}]


def _fields(typed_dict: type) -> set[str]:
    # ``stream`` lives on the streaming/non-streaming subclasses of both SDKs' params.
    return set(typing.get_type_hints(typed_dict)) | {"stream"}


def test_every_sdk_create_field_is_classified() -> None:
    openai_fields = _fields(completion_create_params.CompletionCreateParamsBase)
    anthropic_fields = _fields(message_create_params.MessageCreateParamsBase)
    chat_known = CHAT_MAPPED | CHAT_IGNORED.keys() | CHAT_REFUSED.keys()
    messages_known = MESSAGES_MAPPED | MESSAGES_IGNORED.keys() | MESSAGES_REFUSED.keys()
    assert openai_fields - chat_known == set(), "classify in anthropic_params.CHAT_*"
    assert anthropic_fields - messages_known == set(), "classify in anthropic_params.MESSAGES_*"
    # One class per field, each with its reason.
    assert not CHAT_MAPPED & (CHAT_IGNORED.keys() | CHAT_REFUSED.keys())
    assert not CHAT_IGNORED.keys() & CHAT_REFUSED.keys()
    assert not MESSAGES_MAPPED & (MESSAGES_IGNORED.keys() | MESSAGES_REFUSED.keys())
    assert all(CHAT_IGNORED.values()) and all(MESSAGES_REFUSED.values())


def _refused_value(name: str) -> Any:
    special: dict[str, Any] = {
        "n": 2,
        "modalities": ["text", "audio"],
        "service_tier": "priority",
        "verbosity": "low",
        "frequency_penalty": 0.5,
        "presence_penalty": -1,
        "logit_bias": {"50256": -100},
        "audio": {"voice": "alloy", "format": "mp3"},
        "functions": [{"name": "f"}],
        "function_call": "auto",
        "top_k": 5,
        "inference_geo": "eu",
    }
    return special.get(name, {"anything": True})


@pytest.mark.parametrize("name", sorted(CHAT_REFUSED))
def test_each_refused_chat_field_is_a_400_naming_it(name: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        chat_request_to_messages({"messages": HI, name: _refused_value(name)}, "claude")
    assert refused.value.param == name and name in refused.value.message


@pytest.mark.parametrize("name", sorted(MESSAGES_REFUSED))
def test_each_refused_messages_field_is_a_400_naming_it(name: str) -> None:
    payload = {"messages": HI, "max_tokens": 9, name: _refused_value(name)}
    with pytest.raises(InvalidRequest) as refused:
        messages_request_to_chat(payload, "gpt")
    assert refused.value.param == name


def test_neutral_values_and_ignored_fields_pass_without_a_trace() -> None:
    neutral = {
        "n": 1,
        "modalities": ["text"],
        "service_tier": "auto",
        "frequency_penalty": 0,
        "store": False,
        "logprobs": False,
        "metadata": {"tag": "x"},
        "prompt_cache_key": "k",
        "prediction": {"type": "content", "content": "x"},
    }
    request = chat_request_to_messages({"messages": HI, **neutral}, "claude")
    assert set(request) == {"model", "max_tokens", "messages"}
    ignored = {"cache_control": {"type": "ephemeral"}, "service_tier": "auto", "speed": "fast"}
    chat = messages_request_to_chat({"messages": HI, "max_tokens": 9, **ignored}, "gpt")
    assert set(chat) == {"model", "messages", "max_tokens"}


# ----------------------------------------------------------------- OpenAI → Anthropic parts


def test_file_parts_become_documents_and_cache_control_is_carried() -> None:
    cache = {"type": "ephemeral"}
    content = [
        {"type": "text", "text": "Summarise", "cache_control": cache},
        {
            "type": "file",
            "file": {"file_data": f"data:application/pdf;base64,{PDF_B64}", "filename": "a.pdf"},
            "cache_control": cache,
        },
        {"type": "file", "file": {"file_data": "https://example.test/b.pdf"}},
        {"type": "file", "file": {"file_data": "data:text/plain;base64,aGVsbG8="}},
    ]
    payload = {
        "messages": [
            {
                "role": "system",
                "content": [{"type": "text", "text": "Sys", "cache_control": cache}],
            },
            {"role": "user", "content": content},
        ],
        "tools": [
            {
                "type": "function",
                "function": {"name": "f", "parameters": {"type": "object"}},
                "cache_control": cache,
            }
        ],
    }
    request = chat_request_to_messages(payload, "claude")
    assert request["system"] == [{"type": "text", "text": "Sys", "cache_control": cache}]
    assert request["tools"][0]["cache_control"] == cache
    text, pdf, url, plain = request["messages"][0]["content"]
    assert text == {"type": "text", "text": "Summarise", "cache_control": cache}
    assert pdf == {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": PDF_B64},
        "title": "a.pdf",
        "cache_control": cache,
    }
    assert url == {
        "type": "document",
        "source": {"type": "url", "url": "https://example.test/b.pdf"},
    }
    assert plain["source"] == {"type": "text", "media_type": "text/plain", "data": "hello"}


@pytest.mark.parametrize(
    ("part", "named"),
    [
        ({"type": "file", "file": {"file_id": "file-abc"}}, "file_id"),
        ({"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}, "input_audio"),
        ({"type": "file", "file": {"file_data": "data:application/zip;base64,UEs="}}, "file"),
        ({"type": "video_url", "video_url": {}}, "content part 'video_url'"),
    ],
)
def test_parts_claude_cannot_read_are_refused_by_name(part: dict[str, Any], named: str) -> None:
    payload = {"messages": [{"role": "user", "content": [part]}]}
    with pytest.raises(InvalidRequest) as refused:
        chat_request_to_messages(payload, "claude")
    assert refused.value.param == named


def test_signed_thinking_and_tool_errors_go_back_to_claude() -> None:
    signed = {"type": "thinking", "thinking": "Let me look.", "signature": "sig-1"}
    call = {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    payload = {
        "messages": [
            {"role": "user", "content": "Go"},
            {
                "role": "assistant",
                "content": None,
                "reasoning_content": "Let me look.",
                "thinking_blocks": [signed],
                "tool_calls": [call],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "boom", "is_error": True},
        ],
        "reasoning_effort": "low",
        "max_tokens": 2000,
    }
    request = chat_request_to_messages(payload, "claude")
    assistant, result = request["messages"][1:]
    assert assistant["content"][0] == signed  # ahead of the tool_use it led to
    assert assistant["content"][1]["type"] == "tool_use"
    assert result["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "boom", "is_error": True}
    ]
    assert request["thinking"] == {"type": "enabled", "budget_tokens": 1024}


# ----------------------------------------------------------------- Anthropic → OpenAI parts


def test_documents_thinking_history_and_tool_errors_reach_openai() -> None:
    payload = {
        "max_tokens": 100,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "title": "report.pdf",
                        "source": {
                            "type": "base64",
                            "media_type": "application/pdf",
                            "data": PDF_B64,
                        },
                        "cache_control": {"type": "ephemeral"},
                    },
                    {"type": "document", "source": {"type": "text", "data": "plain words"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Hmm.", "signature": "s"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "no", "is_error": True}
                ],
            },
        ],
        "output_config": {"effort": "medium"},
    }
    request = messages_request_to_chat(payload, "gpt")
    user, assistant, tool = request["messages"]
    assert user["content"] == [
        {
            "type": "file",
            "file": {
                "file_data": f"data:application/pdf;base64,{PDF_B64}",
                "filename": "report.pdf",
            },
        },
        {"type": "text", "text": "plain words"},
    ]
    assert assistant["reasoning_content"] == "Hmm." and "thinking_blocks" not in assistant
    assert tool == {"role": "tool", "tool_call_id": "t1", "content": f"{TOOL_ERROR_PREFIX}no"}
    assert request["reasoning_effort"] == "medium"


@pytest.mark.parametrize(
    ("block", "named"),
    [
        ({"type": "document", "source": {"type": "file", "file_id": "f1"}}, "file_id"),
        ({"type": "image", "source": {"type": "file", "file_id": "f1"}}, "file_id"),
        ({"type": "search_result", "source": "x", "title": "t"}, "content block 'search_result'"),
    ],
)
def test_blocks_an_openai_model_cannot_read_are_refused(block: dict[str, Any], named: str) -> None:
    payload = {"max_tokens": 9, "messages": [{"role": "user", "content": [block]}]}
    with pytest.raises(InvalidRequest) as refused:
        messages_request_to_chat(payload, "gpt")
    assert refused.value.param == named


def test_server_tools_are_refused_towards_openai() -> None:
    payload = {
        "max_tokens": 9,
        "messages": HI,
        "tools": [{"type": "web_search_20250305", "name": "web_search"}],
    }
    with pytest.raises(InvalidRequest) as refused:
        messages_request_to_chat(payload, "gpt")
    assert refused.value.param == "tools" and "web_search_20250305" in refused.value.message


# ----------------------------------------------------------------- answers and streams back


def test_claude_answer_keeps_signatures_stop_sequence_and_reasoning_tokens() -> None:
    message = {
        "id": "msg_1",
        "model": "claude",
        "content": [
            {"type": "thinking", "thinking": "Hmm.", "signature": "sig"},
            {"type": "text", "text": "Done"},
        ],
        "stop_reason": "stop_sequence",
        "stop_sequence": "END",
        "usage": {
            "input_tokens": 5,
            "output_tokens": 9,
            "output_tokens_details": {"thinking_tokens": 4},
        },
    }
    answer = message_to_chat_answer(message)
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == "END"
    assert choice["message"]["reasoning_content"] == "Hmm."
    assert choice["message"]["thinking_blocks"] == [message["content"][0]]
    assert answer["usage"]["completion_tokens_details"] == {"reasoning_tokens": 4}
    # And back: an upstream fronting Claude keeps the signature for an Anthropic client.
    back = chat_answer_to_message(answer)
    assert back["content"][0] == message["content"][0]
    assert (back["stop_reason"], back["stop_sequence"]) == ("stop_sequence", "END")
    assert back["usage"]["output_tokens_details"] == {"thinking_tokens": 4}


def _sse(events: list[dict[str, Any]], named: bool) -> bytes:
    out = b""
    for event in events:
        name = f"event: {event['type']}\n".encode() if named else b""
        out += name + b"data: " + json.dumps(event).encode() + b"\n\n"
    return out


def test_a_claude_stream_sends_signed_thinking_and_the_stop_sequence() -> None:
    events = [
        {
            "type": "message_start",
            "message": {"id": "m", "model": "c", "usage": {"input_tokens": 3}},
        },
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": ""},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "Hm"},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "m."},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": "sg"},
        },
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "redacted_thinking", "data": "x"},
        },
        {
            "type": "message_delta",
            "delta": {"stop_reason": "stop_sequence", "stop_sequence": "END"},
            "usage": {"output_tokens": 7, "output_tokens_details": {"thinking_tokens": 5}},
        },
        {"type": "message_stop"},
    ]
    out = MessagesToChatStream().feed(_sse(events, named=True)).decode()
    chunks = [json.loads(e[6:]) for e in out.split("\n\n") if e.startswith("data: {")]
    blocks = [
        b for c in chunks for ch in c["choices"] for b in ch["delta"].get("thinking_blocks", [])
    ]
    assert blocks == [
        {"type": "thinking", "thinking": "Hmm.", "signature": "sg"},
        {"type": "redacted_thinking", "data": "x"},
    ]
    last_choice = [c for c in chunks if c["choices"]][-1]["choices"][0]
    assert last_choice["finish_reason"] == "stop" and last_choice["stop_reason"] == "END"
    assert chunks[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 5}


def test_an_openai_stream_tells_a_messages_client_its_stop_sequence_and_reasoning() -> None:
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "g"}
    usage = {
        "prompt_tokens": 4,
        "completion_tokens": 6,
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"content": "x"}}]},
        {
            **base,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "##"}],
        },
        {**base, "choices": [], "usage": usage},
    ]
    raw = _sse(chunks, named=False) + b"data: [DONE]\n\n"
    out = ChatToMessagesStream(b'{"messages":[{"role":"user","content":"hello there"}]}').feed(raw)
    events = {
        line.split(": ", 1)[1]: json.loads(data[6:])
        for line, data in (e.split("\n") for e in out.decode().split("\n\n") if e)
    }
    assert events["message_start"]["message"]["usage"]["input_tokens"] > 0  # relay's estimate
    delta = events["message_delta"]
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "##"}
    assert delta["usage"]["output_tokens_details"] == {"thinking_tokens": 2}


def test_responses_input_files_reach_claude_as_documents() -> None:
    content = [
        {"type": "input_text", "text": "Compare"},
        {
            "type": "input_file",
            "file_data": f"data:application/pdf;base64,{PDF_B64}",
            "filename": "a.pdf",
        },
        {"type": "input_file", "file_url": "https://example.test/b.pdf"},
    ]
    chat = responses_request_to_chat({"input": [{"role": "user", "content": content}]}, "claude")
    request = chat_request_to_messages(chat, "claude")
    text, first, second = request["messages"][0]["content"]
    assert text == {"type": "text", "text": "Compare"}
    assert first["source"] == {"type": "base64", "media_type": "application/pdf", "data": PDF_B64}
    assert first["title"] == "a.pdf"
    assert second["source"] == {"type": "url", "url": "https://example.test/b.pdf"}


def _union_kinds(union: Any) -> list[str]:
    """The ``type`` literal of every TypedDict in an SDK's content union."""
    return [
        typing.get_args(typing.get_type_hints(member)["type"])[0]
        for member in typing.get_args(union)
    ]


_SAMPLE_FIELDS: dict[str, dict[str, Any]] = {
    "text": {"text": "t"},
    "image_url": {"image_url": {"url": "https://example.test/i.png"}},
    "file": {"file": {"file_data": f"data:application/pdf;base64,{PDF_B64}"}},
    "image": {"source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
    "document": {"source": {"type": "base64", "media_type": "application/pdf", "data": PDF_B64}},
    "thinking": {"thinking": "h", "signature": "s"},
    "tool_use": {"id": "t1", "name": "f", "input": {}},
    "tool_result": {"tool_use_id": "t1", "content": "r"},
}
# The documented no-ops (docs/architecture.md §6.6): only Claude can read these.
_DROPPED = {("assistant", "redacted_thinking")}


def test_every_sdk_content_part_type_is_translated_or_refused() -> None:
    for kind in _union_kinds(chat_completion_content_part_param.ChatCompletionContentPartParam):
        part = {"type": kind, **_SAMPLE_FIELDS.get(kind, {})}
        payload = {"messages": [{"role": "user", "content": [part]}]}
        try:
            turns = chat_request_to_messages(payload, "claude")["messages"]
        except InvalidRequest:
            continue
        assert turns and turns[0]["content"], kind  # carried, not dropped
    for kind in _union_kinds(content_block_param.ContentBlockParam):
        block = {"type": kind, **_SAMPLE_FIELDS.get(kind, {})}
        for role in ("user", "assistant"):
            bare = {
                "max_tokens": 9,
                "messages": [{"role": role, "content": [{"type": "text", "text": "x"}]}],
            }
            with_block = {
                "max_tokens": 9,
                "messages": [{"role": role, "content": [{"type": "text", "text": "x"}, block]}],
            }
            try:
                translated = messages_request_to_chat(with_block, "gpt")
            except InvalidRequest:
                continue
            unchanged = translated == messages_request_to_chat(bare, "gpt")
            assert unchanged == ((role, kind) in _DROPPED), (role, kind)
