"""Pass an Anthropic Messages stream through while reading its usage.

The counterpart of ``relay.upstream.stream_openai.StreamTap`` for ``/v1/messages``. ``feed`` returns
the complete events to forward at once and keeps back only ``message_delta`` (the final
usage) and ``message_stop``; once relay settled, ``closing_event`` sends both with relay's
cost and ``metadata`` added, as the stream's last events (docs/architecture.md §6.4).
Usage comes from ``message_start`` (input and cache counts) and ``message_delta``
(cumulative totals that overwrite the earlier ones).

Where the cost goes: the anthropic SDK's stream helper builds its final message from
``message_start`` and copies only the typed usage fields of ``message_delta``; the one
object it copies whole is ``usage.output_tokens_details``. So ``message_delta.usage``
carries ``cost`` (USD number, as on every relay answer) and ``output_tokens_details``
carries it too (``cost``, ``cost_micros``) beside ``thinking_tokens``, which is the
upstream's count or, when it gave none, relay's count of the thinking it streamed:
``stream.get_final_message().usage.output_tokens_details.cost``.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from relay.upstream.providers.anthropic_stream import SseBuffer
from relay.upstream.relay_fields import add_relay_fields, encode_with_decimals, usd_number
from relay.upstream.stream_openai import CHARS_PER_TOKEN
from relay.upstream.wire_anthropic import MessagesAnswer, MessagesUsage
from relay.upstream.wire_openai import is_usage_out_of_range

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
# What the tap does with an event: pass it on, hold it back, or end the stream with it.
_SEND, _HOLD, _END = "send", "hold", "end"


class MessagesStreamTap:
    __slots__ = (
        "_events",
        "_final_delta",
        "upstream_id",
        "usage",
        "done",
        "delivered_chars",
        "thinking_chars",
        "usage_invalid",
        "late_usage",
    )

    def __init__(self) -> None:
        self._events = SseBuffer()
        self._final_delta: dict[str, Any] | None = None  # message_delta, held back
        self.upstream_id: str | None = None
        self.usage: MessagesUsage | None = None
        self.done = False
        self.delivered_chars = 0
        self.thinking_chars = 0
        # The upstream reported usage out of bounds: it is not billed (an anomaly).
        self.usage_invalid = False
        # Usage that came after message_stop, when the request was already settled.
        self.late_usage = False

    def feed(self, chunk: bytes) -> bytes:
        """Complete events from ``chunk`` (plus what was pending) that go out now."""
        out: list[bytes] = []
        for event in self._events.feed(chunk):
            if self.done:  # read after the end (relay drains the upstream): never sent
                self.late_usage = self.late_usage or event.name == "message_delta"
            else:
                verdict = self._verdict(event.data)
                if verdict == _SEND:
                    out.append(event.raw)
                elif verdict == _HOLD:
                    out.append(self._hold(event.data))
        return b"".join(out)

    def _hold(self, data: bytes) -> bytes:
        """Keep this message_delta back; an earlier one held goes out now."""
        earlier = self.release_held()
        payload = msgspec.json.decode(data)
        self._final_delta = payload if isinstance(payload, dict) else None
        return earlier

    def release_held(self) -> bytes:
        """The held ``message_delta`` as it came (before an error event ends the stream)."""
        if self._final_delta is None:
            return b""
        held, self._final_delta = self._final_delta, None
        return sse_event_exact("message_delta", held)

    def _verdict(self, data: bytes) -> str:
        try:
            event = _decode_event(data)
        except msgspec.ValidationError as exc:
            self.usage_invalid = self.usage_invalid or is_usage_out_of_range(exc)
            return _SEND  # not ours to judge; the client sees it as the upstream sent it
        except msgspec.DecodeError:
            return _SEND  # not ours to judge; the client sees it as the upstream sent it
        if event.type == "message_start" and event.message is not None:
            self.upstream_id = event.message.id
            self._add_usage(event.message.usage)
        elif event.type == "message_delta":
            self._add_usage(event.usage)
            return _HOLD  # it goes out with relay's cost in closing_event
        elif event.type == "content_block_delta" and event.delta is not None:
            delta = event.delta
            self.delivered_chars += sum(
                len(part or "") for part in (delta.text, delta.thinking, delta.partial_json)
            )
            self.thinking_chars += len(delta.thinking or "")
        elif event.type == "message_stop":
            self.done = True
            return _END
        return _SEND

    def _add_usage(self, usage: MessagesUsage | None) -> None:
        if usage is not None:
            self.usage = usage if self.usage is None else self.usage.merge(usage)

    def delivered_tokens_estimate(self) -> int:
        return math.ceil(self.delivered_chars / CHARS_PER_TOKEN)

    def closing_event(self, metadata: dict[str, str], cost_micros: int | None = None) -> bytes:
        """The last events: the held ``message_delta`` with relay's cost, then
        ``message_stop`` with the usage (and its cost) and relay's metadata.

        Extra fields on an event are ignored by the Anthropic SDKs' typed events, so the
        events keep Anthropic's shape."""
        delta = b""
        if self._final_delta is not None:
            if cost_micros is not None:
                self._add_cost(self._final_delta, cost_micros)
            delta = self.release_held()
        payload: dict[str, Any] = {"type": "message_stop", "metadata": metadata}
        if self.usage is not None:
            payload["usage"] = msgspec.to_builtins(self.usage)
        stop = sse_event_exact("message_stop", add_relay_fields(payload, None, cost_micros))
        return delta + stop

    def _add_cost(self, event: dict[str, Any], cost_micros: int) -> None:
        usage = event.get("usage")
        if not isinstance(usage, dict):
            usage = event["usage"] = {
                "output_tokens": (self.usage and self.usage.output_tokens) or 0
            }
        details = usage.get("output_tokens_details")
        details = dict(details) if isinstance(details, dict) else {}
        if not isinstance(details.get("thinking_tokens"), int):
            details["thinking_tokens"] = math.ceil(self.thinking_chars / CHARS_PER_TOKEN)
        details["cost"] = usd_number(cost_micros)
        details["cost_micros"] = str(cost_micros)
        usage["output_tokens_details"] = details
        usage["cost"] = usd_number(cost_micros)


def sse_event_exact(name: str, payload: dict[str, Any]) -> bytes:
    """A named event whose decimals are written as exact JSON numbers."""
    return b"event: " + name.encode() + b"\ndata: " + encode_with_decimals(payload) + b"\n\n"
