"""Pass an OpenAI-style SSE stream through while reading its usage.

``StreamTap.feed`` takes upstream bytes as they arrive and returns the complete events
to forward at once. It keeps back three things: the chunk that finishes a choice (the
one with a ``finish_reason``, normally the last chunk with choices), the upstream's
usage-only chunk (``"choices": []``, which relay always asks for) and ``data: [DONE]``.
``StreamTap.closing_events`` then sends the finishing chunk with relay's ``metadata``
added, the usage-only chunk (with ``usage.cost``) only when the client itself asked
with ``stream_options.include_usage``, and ``[DONE]`` (docs/architecture.md §6.4): every
chunk a client sees keeps OpenAI's shape, so ``chunk.choices[0]`` works to the end of the
loop. When
the upstream reported no usage (it broke off, or the client left),
``delivered_tokens_estimate`` says what was delivered.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from relay.upstream.relay_fields import add_relay_fields, encode_with_decimals, with_relay_fields
from relay.upstream.wire_openai import Usage, is_usage_out_of_range

__all__ = ["CHARS_PER_TOKEN", "StreamTap"]

_DONE = b"data: [DONE]\n\n"
_NEXT_DATA = b"\n\ndata:"
_LF = ord("\n")
# Characters per token when relay has to estimate what it delivered.
CHARS_PER_TOKEN = 4


# gc=False: decoded from JSON, these never take part in a reference cycle, so the cyclic
# collector need not track the few objects each streamed event makes.
class _Delta(msgspec.Struct, gc=False):
    content: str | None = None
    reasoning_content: str | None = None
    # Plain Raw: msgspec decodes ``Raw | None`` as "null only" and would reject a chunk with
    # tool calls, leaving them out of the delivered estimate. Empty when absent.
    tool_calls: msgspec.Raw = msgspec.Raw()


class _Choice(msgspec.Struct, gc=False):
    delta: _Delta | None = None
    finish_reason: str | None = None
    text: str | None = None  # legacy completions stream text, not deltas


class _Chunk(msgspec.Struct, gc=False):
    """What every event is read for."""

    choices: list[_Choice] | None = None
    usage: Usage | None = None


class _FirstChunk(_Chunk, gc=False):
    """The ids too, until an event gave them: later events skip them unread, which spares
    two strings and an int per event (the decoder allocates every field it keeps)."""

    id: str | None = None
    model: str | None = None
    created: int | None = None


_decode_first = msgspec.json.Decoder(_FirstChunk).decode
_decode_chunk = msgspec.json.Decoder(_Chunk).decode


class StreamTap:
    __slots__ = (
        "_pending",
        "_client_wants_usage",
        "upstream_id",
        "model",
        "created",
        "usage",
        "_usage_event",
        "_finishing",
        "done",
        "events",
        "delivered_chars",
        "usage_invalid",
    )

    def __init__(self, client_wants_usage: bool = False) -> None:
        self._pending = b""
        self._client_wants_usage = client_wants_usage
        self.upstream_id: str | None = None
        self.model: str | None = None
        self.created: int | None = None
        self.usage: Usage | None = None
        self._usage_event: bytes | None = None
        # The last chunk that finished a choice, kept back to carry relay's metadata.
        self._finishing: bytes | None = None
        self.done = False
        self.events = 0
        self.delivered_chars = 0
        # The upstream reported usage out of bounds: it is not billed (an anomaly).
        self.usage_invalid = False

    def feed(self, chunk: bytes) -> bytes:
        """Complete events from ``chunk`` (plus what was pending) that go out now."""
        data = self._pending + chunk if self._pending else chunk
        payloads = _one_line_events(data)
        if payloads is None:
            return self._feed_events(data)
        # Forwarded events go out as the runs of bytes they came in (``data[run:start]``),
        # not one slice each: the list is built only once an event is kept back or dropped.
        out: list[bytes] | None = None
        run = start = 0
        for payload in payloads:
            stop = start + len(payload) + 7  # ``data:``, the payload, the blank line
            released = self._finishing
            verdict = self._keep_payload(payload)
            # (This step and the same in ``_feed_events`` stay inline: a call per event is
            # a good part of what the tap costs.)
            if released is not None and self._finishing is not released:
                out = _flushed(out, data, run, start)  # a later chunk came: let it go first
                out.append(b"data: " + released + b"\n\n")
                run = start
            if not verdict:
                out = _flushed(out, data, run, start)
                run = stop
            start = stop
        self._pending = data[start:]
        return _released(out, data, run, start)

    def _feed_events(self, data: bytes) -> bytes:
        """``feed`` for any other shape: CRLF, comments, other fields, several lines."""
        # (``find``, not ``in``: ``bytes.__contains__`` first tries the needle as an int
        # and clears a TypeError, several times the cost of the search itself.)
        crlf = data.find(b"\r") >= 0
        out: list[bytes] | None = None
        run = start = 0
        size = len(data)
        while True:
            released = self._finishing
            if crlf:
                end, sep_len = _next_boundary(data, start)
                if end < 0:
                    break
                stop = end + sep_len
                verdict = self._keep(data[start:stop])
            else:
                # A one-line ``data:`` event: its LF is found by memchr and the blank line
                # after it checked by index; searching for the two-byte boundary instead
                # scans the event byte by byte, several times slower.
                end = data.find(b"\n", start)
                if end < 0 or end + 1 == size:
                    break
                if data[end + 1] == _LF and data.startswith(b"data:", start):
                    stop = end + 2
                    verdict = self._keep_payload(data[start + 5 : end])
                else:  # other fields or more lines: up to the blank line
                    end = data.find(b"\n\n", start)
                    if end < 0:
                        break
                    stop = end + 2
                    verdict = self._keep(data[start:stop])
            if released is not None and self._finishing is not released:
                out = _flushed(out, data, run, start)
                out.append(b"data: " + released + b"\n\n")
                run = start
            if not verdict:
                out = _flushed(out, data, run, start)
                run = stop
            start = stop
        self._pending = data[start:]
        return _released(out, data, run, start)

    def _keep(self, event: bytes) -> bool:
        if event.startswith(b"data:"):  # a data line first, maybe other lines after it
            payload = event[5 : event.find(b"\n")].strip()
        else:
            found = _data_of(event)
            if found is None:
                return True  # comments and keep-alives pass through
            payload = found
        return self._keep_payload(payload)

    def _keep_payload(self, payload: bytes) -> bool:
        """Whether the event with this data goes out now. ``payload`` may keep the blanks
        around it: JSON allows them, and only what is kept back is stripped."""
        if payload[-1:] != b"}":  # not a JSON object's end: ``[DONE]``, or as the upstream sent
            payload = payload.strip()
            if payload == b"[DONE]":
                self.done = True
                return False
        try:
            if self.upstream_id is None:
                first = _decode_first(payload)
                self.upstream_id, self.model, self.created = first.id, first.model, first.created
                chunk: _Chunk = first
            else:
                chunk = _decode_chunk(payload)
        except msgspec.ValidationError as exc:
            self.usage_invalid = self.usage_invalid or is_usage_out_of_range(exc)
            return True  # not ours to judge; the client sees it as the upstream sent it
        except msgspec.DecodeError:
            return True  # not ours to judge; the client sees it as the upstream sent it
        self.events += 1
        choices = chunk.choices
        if chunk.usage is not None:
            self.usage = chunk.usage
            if not choices:
                self._usage_event = payload.strip()
                return False
        if not choices:
            return True
        self._finishing = None  # any chunk with choices releases the one kept back
        # One pass over the choices (usually one): what they delivered, and whether one ended.
        finished = False
        for choice in choices:
            self.delivered_chars += _choice_chars(choice)
            if choice.finish_reason:
                finished = True
        if finished:
            self._finishing = payload.strip()
            return False
        return True

    def delivered_tokens_estimate(self) -> int:
        return max(math.ceil(self.delivered_chars / CHARS_PER_TOKEN), 0)

    def closing_events(
        self,
        metadata: dict[str, str],
        usage: dict[str, Any],
        cost_micros: int | None = None,
        failure: bytes = b"",
    ) -> bytes:
        """``failure``, the finishing chunk with metadata, the usage chunk if asked, ``[DONE]``."""
        out = [b"data: " + failure + b"\n\n"] if failure else []
        out.append(b"data: " + self._finishing_chunk(metadata, cost_micros) + b"\n\n")
        if self._client_wants_usage:
            out.append(b"data: " + self._usage_chunk(usage, cost_micros) + b"\n\n")
        out.append(_DONE)
        return b"".join(out)

    def _envelope(self, metadata: dict[str, str], choices: list[Any]) -> dict[str, Any]:
        return {
            "id": self.upstream_id or metadata.get("request_id"),
            "object": "chat.completion.chunk",
            "created": self.created or 0,
            "model": self.model or metadata.get("executed_model"),
            "choices": choices,
        }

    def _finishing_chunk(self, metadata: dict[str, str], cost_micros: int | None) -> bytes:
        if self._finishing is not None:
            try:
                return with_relay_fields(self._finishing, metadata, cost_micros)
            except ValueError:
                pass  # decoded once already; unreachable in practice
        # No chunk finished a choice (the upstream broke off): an empty delta carries it.
        choice = {"index": 0, "delta": {}, "finish_reason": None}
        final = self._envelope(metadata, [choice])
        return encode_with_decimals(add_relay_fields(final, metadata, None))

    def _usage_chunk(self, usage: dict[str, Any], cost_micros: int | None) -> bytes:
        if self._usage_event is not None:
            try:
                return with_relay_fields(self._usage_event, None, cost_micros)
            except ValueError:
                pass  # decoded once already; unreachable in practice
        final = {**self._envelope({}, []), "usage": dict(usage)}
        return encode_with_decimals(add_relay_fields(final, None, cost_micros))


def _one_line_events(data: bytes) -> list[bytes] | None:
    """The payloads of ``data``'s complete events when each is one ``data:`` line ended by
    LF LF (the usual stream); None for anything else, which ``_feed_events`` reads.

    One split finds every event, where finding each one costs a search, a prefix test and
    a slice, each with its arguments parsed (most of the tap's cost besides decoding).
    """
    end = data.rfind(b"\n\n")
    # A CR anywhere (``find`` of one byte is a memchr) ends lines too, even past ``end``.
    if end < 0 or not data.startswith(b"data:") or data.find(b"\r") >= 0:
        return None
    region = data[5:end]
    if region.find(b"\n") < 0:  # one event
        return [region]
    payloads = region.split(_NEXT_DATA)
    # Only the separators held an LF: every event was one line (no other fields, no
    # blank line doubled).
    if b"".join(payloads).find(b"\n") >= 0:
        return None
    return payloads


def _released(out: list[bytes] | None, data: bytes, run: int, start: int) -> bytes:
    """What goes out of ``data[:start]``: usually every event, so the bytes as they came,
    without copying; else the parts gathered in ``out`` and the last run."""
    if out is None:
        return data[:start]
    out.append(data[run:start])
    return b"".join(out)


def _flushed(out: list[bytes] | None, data: bytes, run: int, start: int) -> list[bytes]:
    """``out`` with the run of forwarded events ``data[run:start]`` added."""
    if out is None:
        return [data[run:start]]
    out.append(data[run:start])
    return out


def _next_boundary(data: bytes, start: int) -> tuple[int, int]:
    lf = data.find(b"\n\n", start)
    crlf = data.find(b"\r\n\r\n", start)
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, 4
    return lf, 2


def _data_of(event: bytes) -> bytes | None:
    """The data of a ``data:`` line of an event that does not start with one (rare)."""
    for line in event.splitlines():
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None


def _choice_chars(choice: _Choice) -> int:
    """Characters one streamed choice delivered (legacy text, content, reasoning, tools)."""
    text = choice.text
    total = len(text) if text else 0
    delta = choice.delta
    if delta is None:
        return total
    if delta.content:
        total += len(delta.content)
    if delta.reasoning_content:
        total += len(delta.reasoning_content)
    tool_calls = delta.tool_calls
    size = len(tool_calls)  # 0 when absent; ``null`` is not a delivery
    if size and (size != 4 or bytes(tool_calls) != b"null"):
        total += size
    return total
