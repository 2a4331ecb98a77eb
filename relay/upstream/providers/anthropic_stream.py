"""Streamed translation between OpenAI chat chunks and Anthropic Messages events.

``SseBuffer`` cuts a byte stream into complete server-sent events. The two translators
take upstream bytes as they arrive (``feed``) and return the bytes to send in the
client's dialect at once; ``finish`` flushes what an upstream that ended cleanly leaves.

- ``MessagesToChatStream``: Anthropic events → OpenAI chunks, ending like an OpenAI stream
  with ``stream_options.include_usage``: a usage-only chunk (``"choices": []``), then
  ``data: [DONE]``, so relay's ``StreamTap`` reads and settles it like any OpenAI stream.
  Signed thinking goes out as a ``thinking_blocks`` delta (the whole block, once its
  ``signature_delta`` arrives) for the client to send back; a matched stop sequence as
  the last choice's ``stop_reason``.
- ``ChatToMessagesStream``: OpenAI chunks (asked with ``include_usage``) → Anthropic
  events (``message_start`` … ``message_delta`` with usage, ``message_stop``), each with
  its ``event:`` line, which the Anthropic SDKs require.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import msgspec

from relay.money.estimate import estimate_prompt_tokens
from relay.upstream.providers.anthropic_answers import (
    anthropic_usage,
    finish_reason_of,
    openai_usage,
    stop_reason_of,
    stop_sequence_of,
)
from relay.upstream.wire_openai import encode

__all__ = ["ChatToMessagesStream", "MessagesToChatStream", "SseBuffer", "SseEvent", "sse_event"]

_DONE = b"data: [DONE]\n\n"


def sse_event(name: str, payload: dict[str, Any]) -> bytes:
    """One named server-sent event (the form Anthropic streams use)."""
    return b"event: " + name.encode() + b"\ndata: " + encode(payload) + b"\n\n"


def _data_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + encode(payload) + b"\n\n"


class SseEvent(NamedTuple):
    name: str | None
    data: bytes
    raw: bytes  # the whole event with its blank line, to pass it on unchanged


class SseBuffer:
    """Complete events out of arbitrarily cut chunks (comments and keep-alives skipped)."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[SseEvent]:
        data = (self._pending + chunk).replace(b"\r\n", b"\n")
        *complete, self._pending = data.split(b"\n\n")
        return [parsed for event in complete if (parsed := _parse(event)) is not None]


def _parse(event: bytes) -> SseEvent | None:
    name: str | None = None
    data: list[bytes] = []
    for line in event.split(b"\n"):
        if line.startswith(b"event:"):
            name = line[6:].strip().decode(errors="replace")
        elif line.startswith(b"data:"):
            data.append(line[5:].strip())
    if not data and name is None:
        return None
    return SseEvent(name, b"\n".join(data), event + b"\n\n")


def _decode(data: bytes) -> dict[str, Any] | None:
    try:
        payload = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None
    return payload if isinstance(payload, dict) else None


class MessagesToChatStream:
    """Anthropic SSE → OpenAI chat completion chunks (with a final usage chunk)."""

    def __init__(self, sent: bytes = b"") -> None:
        self._events = SseBuffer()
        self._id = ""
        self._model = ""
        self._created = int(time.time())
        self._usage: dict[str, Any] = {}
        self._tool_calls: dict[int, int] = {}  # content block index → tool call index
        self._thinking: dict[int, str] = {}  # thinking block index → its text so far
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for event in self._events.feed(chunk):
            payload = _decode(event.data)
            if payload is not None:
                out.extend(self._translate(str(payload.get("type") or event.name), payload))
        return b"".join(out)

    def finish(self) -> bytes:
        return b""  # a stream without message_stop broke off: no usage to make up

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return _data_event(self._envelope([choice]))

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }

    def _translate(self, kind: str, payload: dict[str, Any]) -> list[bytes]:
        if kind == "message_start":
            message = payload.get("message") or {}
            self._id = str(message.get("id", ""))
            self._model = str(message.get("model", ""))
            self._usage.update(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(payload)
        if kind == "content_block_delta":
            return self._block_delta(payload)
        if kind == "message_delta":
            usage = payload.get("usage") or {}
            self._usage.update({k: v for k, v in usage.items() if v is not None})
            delta = payload.get("delta") or {}
            reason = finish_reason_of(delta.get("stop_reason"))
            if not reason:
                return []
            chunk = self._chunk({}, reason)
            if isinstance(delta.get("stop_sequence"), str):  # vLLM's field for the match
                choice = {"index": 0, "delta": {}, "finish_reason": reason}
                choice["stop_reason"] = delta["stop_sequence"]
                chunk = _data_event(self._envelope([choice]))
            return [chunk]
        if kind == "message_stop":
            self.done = True
            final = {**self._envelope([]), "usage": openai_usage(self._usage)}
            return [_data_event(final), _DONE]
        if kind == "error":
            error = payload.get("error") or {}
            kind_of_error = str(error.get("type") or "api_error")
            body = {"message": error.get("message", ""), "type": kind_of_error}
            return [_data_event({"error": {**body, "code": kind_of_error, "param": None}})]
        return []  # ping and events relay does not know

    def _block_start(self, payload: dict[str, Any]) -> list[bytes]:
        block = payload.get("content_block") or {}
        if block.get("type") == "thinking":
            self._thinking[int(payload.get("index", 0))] = block.get("thinking", "")
            return []
        if block.get("type") == "redacted_thinking":  # the client needs it back as it is
            return [self._chunk({"thinking_blocks": [block]})]
        if block.get("type") != "tool_use":
            text = block.get("text") if block.get("type") == "text" else None
            return [self._chunk({"content": text})] if text else []
        position = len(self._tool_calls)
        self._tool_calls[int(payload.get("index", 0))] = position
        call = {
            "index": position,
            "id": block.get("id", ""),
            "type": "function",
            "function": {"name": block.get("name", ""), "arguments": ""},
        }
        return [self._chunk({"tool_calls": [call]})]

    def _block_delta(self, payload: dict[str, Any]) -> list[bytes]:
        delta = payload.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            return [self._chunk({"content": delta.get("text", "")})]
        if kind == "thinking_delta":
            index = int(payload.get("index", 0))
            self._thinking[index] = self._thinking.get(index, "") + delta.get("thinking", "")
            return [self._chunk({"reasoning_content": delta.get("thinking", "")})]
        if kind == "signature_delta":
            # The whole signed block at once, as the client must send it back.
            thinking = self._thinking.get(int(payload.get("index", 0)), "")
            signed = {"type": "thinking", "thinking": thinking, "signature": delta["signature"]}
            return [self._chunk({"thinking_blocks": [signed]})]
        if kind == "input_json_delta":
            position = self._tool_calls.get(int(payload.get("index", 0)), 0)
            call = {"index": position, "function": {"arguments": delta.get("partial_json", "")}}
            return [self._chunk({"tool_calls": [call]})]
        return []


class ChatToMessagesStream:
    """OpenAI chat completion chunks → Anthropic Messages events."""

    def __init__(self, sent: bytes = b"") -> None:
        # OpenAI reports usage only at the end, but Anthropic clients read input_tokens
        # at message_start (anthropic 0.40 keeps that value): relay's estimate goes
        # there, and message_delta carries the upstream's own count.
        self._input_estimate = estimate_prompt_tokens(sent) if sent else 0
        self._events = SseBuffer()
        self._started = False
        self._id = ""
        self._model = ""
        self._block = -1  # index of the open content block, -1 when none is open
        self._block_kind: str | None = None
        self._tool_blocks: dict[int, int] = {}  # tool call index → content block index
        self._finish_reason: str | None = None
        self._stop_sequence: str | None = None
        self._usage: dict[str, Any] = {}
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        for event in self._events.feed(chunk):
            if self.done:
                break
            if event.data == b"[DONE]":
                out.extend(self._close())
                continue
            payload = _decode(event.data)
            if payload is not None:
                out.extend(self._translate(payload))
        return b"".join(out)

    def finish(self) -> bytes:
        """An upstream that ended after its finish_reason but without ``[DONE]``."""
        if self.done or self._finish_reason is None:
            return b""
        return b"".join(self._close())

    def _translate(self, payload: dict[str, Any]) -> list[bytes]:
        if isinstance(payload.get("error"), dict):
            error = payload["error"]
            body = {"type": error.get("type") or "api_error", "message": error.get("message", "")}
            return [sse_event("error", {"type": "error", "error": body})]
        out = [] if self._started else [self._start(payload)]
        if isinstance(payload.get("usage"), dict):
            self._usage = payload["usage"]
        for choice in payload.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                out.extend(self._text("thinking", delta["reasoning_content"]))
            if delta.get("content"):
                out.extend(self._text("text", delta["content"]))
            for call in delta.get("tool_calls") or []:
                out.extend(self._tool_call(call))
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
                self._stop_sequence = stop_sequence_of(choice)
        return out

    def _start(self, payload: dict[str, Any]) -> bytes:
        self._started = True
        self._id = str(payload.get("id") or "")
        self._model = str(payload.get("model") or "")
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._input_estimate, "output_tokens": 0},
        }
        return sse_event("message_start", {"type": "message_start", "message": message})

    def _open(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close_block()
        self._block += 1
        self._block_kind = kind
        start = {"type": "content_block_start", "index": self._block, "content_block": block}
        out.append(sse_event("content_block_start", start))
        return out

    def _close_block(self) -> list[bytes]:
        if self._block_kind is None:
            return []
        self._block_kind = None
        stop = {"type": "content_block_stop", "index": self._block}
        return [sse_event("content_block_stop", stop)]

    def _delta(self, index: int, delta: dict[str, Any]) -> bytes:
        payload = {"type": "content_block_delta", "index": index, "delta": delta}
        return sse_event("content_block_delta", payload)

    def _text(self, kind: str, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self._block_kind != kind:
            empty = {"type": "text", "text": ""} if kind == "text" else {"type": kind}
            if kind == "thinking":
                empty = {"type": "thinking", "thinking": "", "signature": ""}
            out = self._open(kind, empty)
        field = "text" if kind == "text" else "thinking"
        out.append(self._delta(self._block, {"type": f"{field}_delta", field: text}))
        return out

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        position = int(call.get("index", 0))
        function = call.get("function") or {}
        out: list[bytes] = []
        if position not in self._tool_blocks:
            block = {
                "type": "tool_use",
                "id": call.get("id", ""),
                "name": function.get("name", ""),
                "input": {},
            }
            out = self._open("tool_use", block)
            self._tool_blocks[position] = self._block
        arguments = function.get("arguments")
        if arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out.append(self._delta(self._tool_blocks[position], delta))
        return out

    def _close(self) -> list[bytes]:
        self.done = True
        out = [] if self._started else [self._start({})]
        out.extend(self._close_block())
        reason = stop_reason_of(self._finish_reason) or "end_turn"
        delta = {
            "stop_reason": "stop_sequence" if self._stop_sequence else reason,
            "stop_sequence": self._stop_sequence,
        }
        usage = anthropic_usage(self._usage)
        out.append(
            sse_event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        )
        out.append(sse_event("message_stop", {"type": "message_stop"}))
        return out
