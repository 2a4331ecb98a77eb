"""relay's own fields on an answer: ``metadata`` (all strings) and ``usage.cost``.

The OpenAI SDK types ``metadata`` as ``Dict[str, str]`` (``ChatCompletion.metadata``,
``Response.metadata``), so every value relay adds is a string: ``cost`` in USD as a
decimal string, ``cost_micros`` as digits. An upstream's own ``metadata`` is kept and
merged, never duplicated (relay's keys win on a clash). ``usage.cost`` is the cost as a
JSON number in USD, the field OpenRouter clients read; it is written from the exact
decimal (``Decimal`` encoded as a number), never through a float.

Adding them splices bytes into the answer rather than decoding and re-encoding all of it
(issue 19: the re-encode cost more than anything else relay does to an answer): relay's
``metadata`` goes in before the object's closing brace and ``cost`` before the closing
brace of its ``usage``. The splice is only taken when the shape leaves no doubt; an answer
with its own top-level ``metadata`` (to merge), a ``usage`` that already has a ``cost`` or
is not found exactly once in the bytes, or anything unusual, takes the re-encode instead.
Either way the client reads the same JSON (tests/test_relay_fields.py compares them).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

__all__ = [
    "MICROS_PER_USD",
    "add_relay_fields",
    "encode_with_decimals",
    "usd_number",
    "with_relay_fields",
]

MICROS_PER_USD = 1_000_000
# Decimals are written as JSON numbers, exactly as they are (no float on the way).
_encode = msgspec.json.Encoder(decimal_format="number").encode


def usd_number(cost_micros: int) -> Decimal:
    """12_345 → Decimal("0.012345"): exact, for ``usage.cost``."""
    return Decimal(cost_micros).scaleb(-6)


def add_relay_fields(
    payload: dict[str, Any], metadata: dict[str, str] | None, cost_micros: int | None
) -> dict[str, Any]:
    """``payload`` with relay's metadata merged in (unless None) and ``usage.cost``."""
    if metadata is not None:
        upstream = payload.get("metadata")
        merged = {**upstream, **metadata} if isinstance(upstream, dict) else dict(metadata)
        payload["metadata"] = merged
    usage = payload.get("usage")
    if cost_micros is not None and isinstance(usage, dict):
        usage["cost"] = usd_number(cost_micros)
    return payload


class _Shape(msgspec.Struct):
    """Where relay's fields go, as the upstream's own bytes (the rest is only validated)."""

    # Empty when absent; a present ``null`` is ``null`` here (never mistaken for absent).
    usage: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    metadata: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


_decode_shape = msgspec.json.Decoder(_Shape).decode
_WHITESPACE = b" \t\r\n"


def _last_byte_before(data: bytes, end: int) -> int:
    """The last non-whitespace byte of ``data[:end]`` (-1 if none)."""
    at = end - 1
    while at >= 0 and data[at] in _WHITESPACE:
        at -= 1
    return data[at] if at >= 0 else -1


def _spliced(
    json_object: bytes, metadata: dict[str, str] | None, cost_micros: int | None
) -> bytes | None:
    """``with_relay_fields`` by splicing bytes, or None when the shape needs the re-encode."""
    try:
        shape = _decode_shape(json_object)  # also proves the whole input is one JSON object
    except msgspec.DecodeError:  # ValidationError included: not an object
        return None
    if len(shape.metadata):  # the upstream's own metadata: merged by the re-encode
        return None
    close = json_object.rfind(b"}")  # the object's own closing brace: only whitespace after
    parts: list[bytes] = []
    start = 0
    usage = shape.usage
    if cost_micros is not None and len(usage):
        body = bytes(usage)
        if body[:1] == b"{":  # not an object (null, a number): no cost, as the re-encode
            # a cost to replace, or escaped keys (``find``: see relay.upstream.redact)
            if body.find(b'"cost"') >= 0 or body.find(b"\\") >= 0:
                return None
            at = json_object.find(body)
            if at < 0 or json_object.find(body, at + 1) >= 0:  # not exactly once
                return None
            usage_close = at + len(body) - 1
            comma = b"" if _last_byte_before(json_object, usage_close) == ord("{") else b","
            parts += (
                json_object[:usage_close],
                comma,
                b'"cost":',
                _encode(usd_number(cost_micros)),
            )
            start = usage_close
    if metadata is not None:
        comma = b"" if _last_byte_before(json_object, close) == ord("{") else b","
        parts += (json_object[start:close], comma, b'"metadata":', _encode(metadata))
        start = close
    parts.append(json_object[start:])
    return b"".join(parts)


def with_relay_fields(
    json_object: bytes, metadata: dict[str, str] | None, cost_micros: int | None = None
) -> bytes:
    """The encoded form of ``add_relay_fields``; ValueError when not a JSON object."""
    spliced = _spliced(json_object, metadata, cost_micros)
    if spliced is not None:
        return spliced
    try:
        payload = msgspec.json.decode(json_object)
    except msgspec.DecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(payload, dict):
        raise ValueError("not a JSON object")
    return _encode(add_relay_fields(payload, metadata, cost_micros))


def encode_with_decimals(payload: dict[str, Any]) -> bytes:
    return _encode(payload)
