"""relay's fields spliced into an answer's bytes read as the re-encoded answer would.

``with_relay_fields`` splices ``metadata`` and ``usage.cost`` into the upstream's bytes when
the shape allows it (issue 19) and re-encodes otherwise; these compare it with the
re-encode (``add_relay_fields`` on the decoded object) on hand-picked and generated answers,
and check that no key is ever duplicated.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.upstream.relay_fields import add_relay_fields, encode_with_decimals, with_relay_fields

METADATA = {"request_id": "req_1", "cost": "0.000015", "cost_micros": "15", "provider": "up"}


def _strict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys: {keys}"
    return dict(pairs)


def _read(data: bytes) -> Any:
    return json.loads(data, object_pairs_hook=_strict, parse_float=Decimal)


def _reencoded(raw: bytes, metadata: dict[str, str] | None, cost_micros: int | None) -> bytes:
    payload = msgspec.json.decode(raw)
    return encode_with_decimals(add_relay_fields(payload, metadata, cost_micros))


CHAT = (
    b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"hi {\\"usage\\":1}"},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,'
    b'"total_tokens":5}}'
)


@pytest.mark.parametrize(
    "raw",
    [
        CHAT,
        b"{}",
        b' {\n  "a": 1\n}\n ',
        b'{"usage": {}}',
        b'{"usage": { } , "x": [1, {"usage": {"prompt_tokens": 1}}]}',
        b'{"usage": {"prompt_tokens": 1}, "choices": [{"usage": {"prompt_tokens": 1}}]}',
        b'{"usage": {"total_tokens": 3, "cost": 0.5}}',
        b'{"usage": {"\\u0063ost": 0.5}}',
        b'{"usage": null, "b": 2}',
        b'{"usage": 7}',
        b'{"metadata": {"u": "1", "cost": "x"}, "usage": {"total_tokens": 3}}',
        b'{"metadata": null}',
        b'{"metadata": {}}',
        b'{"\\u006detadata": {"u": "1"}}',
        b'{"model": "m", "usage": {"input_tokens": 3, "output_tokens": 1}}',
    ],
)
@pytest.mark.parametrize(("metadata", "cost"), [(METADATA, 15), (None, 15), (METADATA, None)])
def test_spliced_answers_read_as_the_reencoded_ones(
    raw: bytes, metadata: dict[str, str] | None, cost: int | None
) -> None:
    assert _read(with_relay_fields(raw, metadata, cost)) == _read(_reencoded(raw, metadata, cost))


def test_the_usual_answer_keeps_the_upstreams_bytes() -> None:
    """The splice path: everything the upstream sent is there, byte for byte, in order."""
    out = with_relay_fields(CHAT, METADATA, 15)
    usage_end = CHAT.rindex(b"}}")
    assert out.startswith(CHAT[:usage_end])
    assert out[usage_end:] == (
        b',"cost":0.000015}' + b',"metadata":' + msgspec.json.encode(METADATA) + b"}"
    )


def test_a_zero_cost_is_written_as_the_reencode_writes_it() -> None:
    raw = b'{"usage": {"prompt_tokens": 0}}'
    out = with_relay_fields(raw, None, 0)
    assert out == b'{"usage": {"prompt_tokens": 0,"cost":0.000000}}'
    assert _reencoded(raw, None, 0) == b'{"usage":{"prompt_tokens":0,"cost":0.000000}}'
    assert _read(out)["usage"]["cost"] == 0


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"x"', b"1", b"null", b"{", b"{} {}", b""])
def test_what_is_not_one_json_object_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        with_relay_fields(raw, METADATA, 15)


_LEAVES = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
_VALUES = st.recursive(
    _LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["a", "usage", "cost", "metadata", "é"]), inner, max_size=3
        )
    ),
    max_leaves=12,
)
_OBJECTS = st.dictionaries(
    st.sampled_from(["id", "usage", "metadata", "choices", "model", "cost", "x"]),
    _VALUES,
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(
    payload=_OBJECTS,
    indent=st.sampled_from([None, 0, 2]),
    cost=st.none() | st.integers(min_value=0, max_value=10**12),
)
def test_generated_answers_read_as_the_reencoded_ones(
    payload: dict[str, Any], indent: int | None, cost: int | None
) -> None:
    raw = json.dumps(payload, indent=indent, ensure_ascii=indent is None).encode()
    assert _read(with_relay_fields(raw, METADATA, cost)) == _read(_reencoded(raw, METADATA, cost))
