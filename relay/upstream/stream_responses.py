"""Pass a Responses API stream through while reading its usage.

The counterpart of ``relay.upstream.stream_openai.StreamTap`` for ``/v1/responses``.
``feed`` returns the complete events to forward at once and keeps back only the
terminal event (``response.completed``, ``response.incomplete`` or ``response.failed``),
which carries the whole response with its usage; ``closing_event`` sends it with
relay's ``metadata`` merged into ``response.metadata`` and ``usage.cost`` added, so the
SDK's final ``Response`` carries relay's cost like a whole answer does.
"""

from __future__ import annotations

import math

import msgspec

from relay.upstream.providers.anthropic_stream import SseBuffer
from relay.upstream.relay_fields import add_relay_fields, encode_with_decimals
from relay.upstream.stream_openai import CHARS_PER_TOKEN
from relay.upstream.wire_responses import ResponsesAnswer, ResponsesUsage

__all__ = ["ResponsesStreamTap"]

_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.function_call_arguments.delta",
        "response.refusal.delta",
    }
)


class _Event(msgspec.Struct):
    type: str = ""
    response: ResponsesAnswer | None = None
    delta: str | None = None


_decode_event = msgspec.json.Decoder(_Event).decode


class ResponsesStreamTap:
    __slots__ = ("_events", "_terminal", "upstream_id", "usage", "done", "delivered_chars")

    def __init__(self) -> None:
        self._events = SseBuffer()
        self._terminal: tuple[str, bytes] | None = None
        self.upstream_id: str | None = None
        self.usage: ResponsesUsage | None = None
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
        if event.response is not None and event.response.id:
            self.upstream_id = event.response.id
        if event.type in _DELTAS and event.delta:
            self.delivered_chars += len(event.delta)
        if event.type in _TERMINAL:
            if event.response is not None:
                self.usage = event.response.usage
            self._terminal = (event.type, data)
            self.done = True
            return False
        return True

    def delivered_tokens_estimate(self) -> int:
        return math.ceil(self.delivered_chars / CHARS_PER_TOKEN)

    def closing_event(self, metadata: dict[str, str], cost_micros: int | None) -> bytes:
        """The terminal event with relay's metadata and cost in its response."""
        if self._terminal is None:
            return b""
        name, data = self._terminal
        payload = msgspec.json.decode(data)
        response = payload.get("response") if isinstance(payload, dict) else None
        if isinstance(response, dict):
            add_relay_fields(response, metadata, cost_micros)
        body = encode_with_decimals(payload) if isinstance(payload, dict) else data
        return b"event: " + name.encode() + b"\ndata: " + body + b"\n\n"
