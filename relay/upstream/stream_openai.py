"""Pass an OpenAI-style SSE stream through while reading its usage.

``StreamTap.feed`` takes upstream bytes as they arrive and returns the complete events
to forward at once. It keeps back two things: the upstream's usage-only chunk (the
one with ``"choices": []``) and ``data: [DONE]``. ``StreamTap.closing_events`` then
sends that usage chunk, with relay's ``metadata`` added, as the last data event
before ``[DONE]`` (docs/architecture.md §6.4). When the upstream reported no usage (it broke off, or
the client left), ``delivered_tokens_estimate`` says what was delivered.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from relay.upstream.wire_openai import Usage, encode

__all__ = ["StreamTap", "splice_metadata"]

_DONE = b"data: [DONE]\n\n"
# Characters per token when relay has to estimate what it delivered.
CHARS_PER_TOKEN = 4


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    # Plain Raw: msgspec decodes ``Raw | None`` as "null only" and would reject a chunk with
    # tool calls, leaving them out of the delivered estimate. Empty when absent.
    tool_calls: msgspec.Raw = msgspec.Raw()


class _Choice(msgspec.Struct):
    delta: _Delta | None = None


class _Chunk(msgspec.Struct):
    id: str | None = None
    model: str | None = None
    created: int | None = None
    choices: list[_Choice] | None = None
    usage: Usage | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


def splice_metadata(json_object: bytes, metadata: dict[str, Any]) -> bytes:
    """``{...}`` → ``{..., "metadata": {...}}`` without re-encoding the original."""
    body = json_object.rstrip()
    if not body.endswith(b"}"):
        raise ValueError("not a JSON object")
    head = body[:-1].rstrip()
    separator = b"" if head.endswith(b"{") else b","
    return head + separator + b'"metadata":' + encode(metadata) + b"}"


class StreamTap:
    __slots__ = (
        "_pending",
        "upstream_id",
        "model",
        "created",
        "usage",
        "_usage_event",
        "done",
        "events",
        "delivered_chars",
    )

    def __init__(self) -> None:
        self._pending = b""
        self.upstream_id: str | None = None
        self.model: str | None = None
        self.created: int | None = None
        self.usage: Usage | None = None
        self._usage_event: bytes | None = None
        self.done = False
        self.events = 0
        self.delivered_chars = 0

    def feed(self, chunk: bytes) -> bytes:
        """Complete events from ``chunk`` (plus what was pending) that go out now."""
        data = self._pending + chunk if self._pending else chunk
        # Most upstreams end events with LF only; the CRLF search runs only when needed.
        boundary = _next_boundary if b"\r" in data else _next_lf_boundary
        kept: list[bytes] = []
        dropped = False
        start = 0
        while True:
            end, sep_len = boundary(data, start)
            if end < 0:
                break
            event = data[start : end + sep_len]
            start = end + sep_len
            if self._keep(event):
                kept.append(event)
            else:
                dropped = True
        self._pending = data[start:]
        # Usually every event goes out: forward the bytes as they came, without copying.
        return b"".join(kept) if dropped else data[:start]

    def _keep(self, event: bytes) -> bool:
        payload = _data_of(event)
        if payload is None:
            return True  # comments and keep-alives pass through
        if payload == b"[DONE]":
            self.done = True
            return False
        try:
            chunk = _decode_chunk(payload)
        except msgspec.DecodeError:
            return True  # not ours to judge; the client sees it as the upstream sent it
        self.events += 1
        if self.upstream_id is None:
            self.upstream_id, self.model, self.created = chunk.id, chunk.model, chunk.created
        if chunk.choices:
            self.delivered_chars += _delta_chars(chunk.choices)
        if chunk.usage is not None:
            self.usage = chunk.usage
            if not chunk.choices:
                self._usage_event = payload
                return False
        return True

    def delivered_tokens_estimate(self) -> int:
        return max(math.ceil(self.delivered_chars / CHARS_PER_TOKEN), 0)

    def closing_events(self, metadata: dict[str, Any], usage: dict[str, Any]) -> bytes:
        """The last data event (usage + metadata), then ``[DONE]``."""
        if self._usage_event is not None:
            return b"data: " + splice_metadata(self._usage_event, metadata) + b"\n\n" + _DONE
        final: dict[str, Any] = {
            "id": self.upstream_id or metadata.get("request_id"),
            "object": "chat.completion.chunk",
            "created": self.created or 0,
            "model": self.model or metadata.get("executed_model"),
            "choices": [],
            "usage": usage,
            "metadata": metadata,
        }
        return b"data: " + encode(final) + b"\n\n" + _DONE


def _next_lf_boundary(data: bytes, start: int) -> tuple[int, int]:
    return data.find(b"\n\n", start), 2


def _next_boundary(data: bytes, start: int) -> tuple[int, int]:
    lf = data.find(b"\n\n", start)
    crlf = data.find(b"\r\n\r\n", start)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, 4
    return lf, 2


def _data_of(event: bytes) -> bytes | None:
    """The data of a single-line ``data:`` event (the form LLM APIs send)."""
    if event.startswith(b"data:"):  # the usual event: one data line, no other fields
        end = event.find(b"\n")
        return event[5:end].strip()
    for line in event.splitlines():
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None


def _delta_chars(choices: list[_Choice]) -> int:
    total = 0
    for choice in choices:
        delta = choice.delta
        if delta is None:
            continue
        total += len(delta.content or "") + len(delta.reasoning_content or "")
        if bytes(delta.tool_calls) not in (b"", b"null"):
            total += len(delta.tool_calls)
    return total
