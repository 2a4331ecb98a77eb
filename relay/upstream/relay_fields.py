"""relay's own fields on an answer: ``metadata`` (all strings) and ``usage.cost``.

The OpenAI SDK types ``metadata`` as ``Dict[str, str]`` (``ChatCompletion.metadata``,
``Response.metadata``), so every value relay adds is a string: ``cost`` in USD as a
decimal string, ``cost_micros`` as digits. An upstream's own ``metadata`` is kept and
merged, never duplicated (relay's keys win on a clash). ``usage.cost`` is the cost as a
JSON number in USD, the field OpenRouter clients read; it is written from the exact
decimal (``Decimal`` encoded as a number), never through a float.
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


def with_relay_fields(
    json_object: bytes, metadata: dict[str, str] | None, cost_micros: int | None = None
) -> bytes:
    """The encoded form of ``add_relay_fields``; ValueError when not a JSON object."""
    try:
        payload = msgspec.json.decode(json_object)
    except msgspec.DecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(payload, dict):
        raise ValueError("not a JSON object")
    return _encode(add_relay_fields(payload, metadata, cost_micros))


def encode_with_decimals(payload: dict[str, Any]) -> bytes:
    return _encode(payload)
