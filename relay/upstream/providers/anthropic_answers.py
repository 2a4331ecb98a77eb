"""Anthropic Messages ↔ OpenAI chat: whole answers, usage, stop reasons and errors.

The request side is ``relay.upstream.providers.anthropic_translate``, the streamed side
``relay.upstream.providers.anthropic_stream``. Usage follows relay's convention
(``relay.money.pricing``): an OpenAI ``prompt_tokens`` counts every input token, Anthropic's
``input_tokens`` excludes cache reads and cache writes, so ``prompt_tokens =
input_tokens + cache_read_input_tokens + cache_creation_input_tokens``. Cache writes
travel in ``prompt_tokens_details.cache_write_tokens`` on the OpenAI side; reasoning
tokens in ``completion_tokens_details.reasoning_tokens`` ↔ Anthropic's
``output_tokens_details.thinking_tokens`` (both already inside the output count).

Signed thinking reaches OpenAI-dialect clients as ``thinking_blocks`` (LiteLLM's and
OpenRouter's extension) beside ``reasoning_content``, so they can send it back on the
next tool-use turn. The stop sequence that ended an answer travels as the choice's
``stop_reason`` (vLLM's extension) beside ``finish_reason: "stop"``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec

from relay.upstream.wire_openai import encode

__all__ = [
    "anthropic_error",
    "anthropic_usage",
    "chat_answer_to_message",
    "finish_reason_of",
    "message_to_chat_answer",
    "openai_error",
    "stop_sequence_of",
    "openai_usage",
    "stop_reason_of",
    "text_of",
    "tool_arguments",
]

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def finish_reason_of(stop_reason: str | None) -> str | None:
    """Anthropic ``stop_reason`` → OpenAI ``finish_reason``."""
    return None if stop_reason is None else _FINISH_REASONS.get(stop_reason, "stop")


def stop_reason_of(finish_reason: str | None) -> str | None:
    """OpenAI ``finish_reason`` → Anthropic ``stop_reason``."""
    return None if finish_reason is None else _STOP_REASONS.get(finish_reason, "end_turn")


def stop_sequence_of(choice: dict[str, Any]) -> str | None:
    """The stop sequence an OpenAI-compatible choice says it stopped at (vLLM's field)."""
    matched = choice.get("stop_reason")
    return matched if isinstance(matched, str) and matched else None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def openai_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """Anthropic usage → OpenAI usage (prompt includes cache reads and writes)."""
    cache_read = _count(usage.get("cache_read_input_tokens"))
    cache_write = _count(usage.get("cache_creation_input_tokens"))
    prompt = _count(usage.get("input_tokens")) + cache_read + cache_write
    completion = _count(usage.get("output_tokens"))
    result: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cache_read, "cache_write_tokens": cache_write},
    }
    details = usage.get("output_tokens_details")
    if isinstance(details, dict) and "thinking_tokens" in details:
        reasoning = _count(details["thinking_tokens"])
        result["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return result


def anthropic_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """OpenAI usage → Anthropic usage (input excludes cache reads and writes)."""
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    cache_read = _count(details.get("cached_tokens"))
    cache_write = _count(details.get("cache_write_tokens"))
    prompt = _count(usage.get("prompt_tokens"))
    result: dict[str, Any] = {
        "input_tokens": max(0, prompt - cache_read - cache_write),
        "output_tokens": _count(usage.get("completion_tokens")),
        "cache_read_input_tokens": cache_read,
        "cache_creation_input_tokens": cache_write,
    }
    completion_details = usage.get("completion_tokens_details")
    if isinstance(completion_details, dict) and "reasoning_tokens" in completion_details:
        reasoning = _count(completion_details["reasoning_tokens"])
        result["output_tokens_details"] = {"thinking_tokens": reasoning}
    return result


def text_of(content: Any) -> str:
    """The text of an OpenAI or Anthropic content value (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def tool_arguments(arguments: Any) -> Any:
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def message_to_chat_answer(message: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic message → an OpenAI chat completion."""
    text = ""
    reasoning = ""
    thinking_blocks = []
    calls = []
    for block in message.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            text += block.get("text", "")
        elif kind == "thinking":
            reasoning += block.get("thinking", "")
            thinking_blocks.append(block)
        elif kind == "redacted_thinking":
            thinking_blocks.append(block)
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id", ""),
                    "type": "function",
                    "function": {
                        "name": block.get("name", ""),
                        "arguments": encode(block.get("input") or {}).decode(),
                    },
                }
            )
    reply: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if reasoning:
        reply["reasoning_content"] = reasoning
    if thinking_blocks:
        reply["thinking_blocks"] = thinking_blocks
    if calls:
        reply["tool_calls"] = calls
    choice = {
        "index": 0,
        "message": reply,
        "finish_reason": finish_reason_of(message.get("stop_reason")) or "stop",
    }
    if isinstance(message.get("stop_sequence"), str):
        choice["stop_reason"] = message["stop_sequence"]
    return {
        "id": message.get("id", ""),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": message.get("model", ""),
        "choices": [choice],
        "usage": openai_usage(message.get("usage") or {}),
    }


def chat_answer_to_message(answer: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completion → an Anthropic message."""
    choices = answer.get("choices") or [{}]
    choice = choices[0]
    reply = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    signed = [
        block
        for block in reply.get("thinking_blocks") or []
        if isinstance(block, dict) and block.get("type") in ("thinking", "redacted_thinking")
    ]
    if signed:  # an upstream fronting Claude (LiteLLM, OpenRouter) kept the signatures
        content.extend(signed)
    elif reply.get("reasoning_content"):
        content.append(
            {"type": "thinking", "thinking": reply["reasoning_content"], "signature": ""}
        )
    if reply.get("content"):
        content.append({"type": "text", "text": text_of(reply["content"])})
    for call in reply.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id", ""),
                "name": function.get("name", ""),
                "input": tool_arguments(function.get("arguments")),
            }
        )
    return {
        "id": answer.get("id", ""),
        "type": "message",
        "role": "assistant",
        "model": answer.get("model", ""),
        "content": content,
        "stop_reason": "stop_sequence"
        if stop_sequence_of(choice)
        else stop_reason_of(choice.get("finish_reason")) or "end_turn",
        "stop_sequence": stop_sequence_of(choice),
        "usage": anthropic_usage(answer.get("usage") or {}),
    }


def _error_fields(raw: bytes) -> tuple[str, str] | None:
    try:
        payload = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return None
    return str(error.get("type") or "api_error"), str(error.get("message") or "")


def anthropic_error(raw: bytes) -> bytes:
    """An OpenAI-shaped error body → Anthropic's; anything else is returned unchanged."""
    fields = _error_fields(raw)
    if fields is None:
        return raw
    kind, message = fields
    return encode({"type": "error", "error": {"type": kind, "message": message}})


def openai_error(raw: bytes) -> bytes:
    """An Anthropic-shaped error body → OpenAI's; anything else is returned unchanged."""
    fields = _error_fields(raw)
    if fields is None:
        return raw
    kind, message = fields
    return encode({"error": {"message": message, "type": kind, "code": kind, "param": None}})
