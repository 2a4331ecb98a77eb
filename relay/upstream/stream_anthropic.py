"""Pass an Anthropic Messages stream through while reading its usage.

The counterpart of ``relay.upstream.stream_openai.StreamTap`` for ``/v1/messages``. ``feed`` returns
the complete events to forward at once and keeps back only ``message_stop``;
``closing_event`` then sends it with relay's ``metadata`` (and the usage) added, as the
stream's last event (docs/architecture.md §6.4). Usage comes from ``message_start`` (input and cache
counts) and ``message_delta`` (cumulative totals that overwrite the earlier ones).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from relay.upstream.providers.anthropic_stream import SseBuffer, sse_event
from relay.upstream.stream_openai import CHARS_PER_TOKEN
from relay.upstream.wire_anthropic import MessagesAnswer, MessagesUsage

__all__ = ["MessagesStreamTap"]


class _Delta(msgspec.Struct):
    text: str | None = None
    thinking: str | None = None
    partial_json: str | None = None


class _Event(msgspec.Struct):
    type: str = ""
    message: MessagesAnswer | None = None
    usage: MessagesUsage | None = None
    delta: _Delta | None = None


_decode_event = msgspec.json.Decoder(_Event).decode


class MessagesStreamTap:
    __slots__ = ("_events", "upstream_id", "usage", "done", "delivered_chars")

    def __init__(self) -> None:
        self._events = SseBuffer()
        self.upstream_id: str | None = None
        self.usage: MessagesUsage | None = None
        self.done = False
        self.delivered_chars = 0

    def feed(self, chunk: bytes) -> bytes:
        """Complete events from ``chunk`` (plus what was pending) that go out now."""
        out: list[bytes] = []
        for event in self._events.feed(chunk):
            if self._keep(event.data):
                out.append(event.raw)
        return b"".join(out)

    def _keep(self, data: bytes) -> bool:
        try:
            event = _decode_event(data)
        except msgspec.DecodeError:
            return True  # not ours to judge; the client sees it as the upstream sent it
        if event.type == "message_start" and event.message is not None:
            self.upstream_id = event.message.id
            self._add_usage(event.message.usage)
        elif event.type == "message_delta":
            self._add_usage(event.usage)
        elif event.type == "content_block_delta" and event.delta is not None:
            delta = event.delta
            self.delivered_chars += sum(
                len(part or "") for part in (delta.text, delta.thinking, delta.partial_json)
            )
        elif event.type == "message_stop":
            self.done = True
            return False
        return True

    def _add_usage(self, usage: MessagesUsage | None) -> None:
        if usage is not None:
            self.usage = usage if self.usage is None else self.usage.merge(usage)

    def delivered_tokens_estimate(self) -> int:
        return math.ceil(self.delivered_chars / CHARS_PER_TOKEN)

    def closing_event(self, metadata: dict[str, Any]) -> bytes:
        """The last event: ``message_stop`` with the usage and relay's metadata."""
        payload: dict[str, Any] = {"type": "message_stop", "metadata": metadata}
        if self.usage is not None:
            payload["usage"] = msgspec.to_builtins(self.usage)
        return sse_event("message_stop", payload)
