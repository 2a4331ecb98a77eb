"""Tests for upstream.stream_openai: SSE pass-through, usage capture and the closing events."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import sse_event, sse_events
from hypothesis import given
from hypothesis import strategies as st

from relay.upstream.relay_fields import with_relay_fields
from relay.upstream.stream_openai import StreamTap

BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "up-1"}
USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
METADATA = {"request_id": "req_1", "cost_micros": "4", "provider": "p", "executed_model": "up-1"}


def _chunk(content: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {**BASE, "choices": [{"index": 0, "delta": delta, "finish_reason": None}], **extra}


CONTENT_EVENTS = [sse_event(_chunk("Hel")), sse_event(_chunk("lo, ")), sse_event(_chunk("wörld"))]
USAGE_EVENT = sse_event({**BASE, "choices": [], "usage": USAGE})
# A stream as OpenAI sends it with stream_options.include_usage, plus a keep-alive comment.
RECORDED = b"".join(
    [CONTENT_EVENTS[0], b": keep-alive\n\n", *CONTENT_EVENTS[1:], USAGE_EVENT, b"data: [DONE]\n\n"]
)
FORWARDED = b"".join([CONTENT_EVENTS[0], b": keep-alive\n\n", *CONTENT_EVENTS[1:]])


def _feed_in_pieces(tap: StreamTap, data: bytes, cuts: list[int]) -> bytes:
    bounds = [0, *sorted(cuts), len(data)]
    return b"".join(tap.feed(data[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))


def test_whole_stream_forwards_content_and_keeps_back_usage_and_done() -> None:
    tap = StreamTap()
    assert tap.feed(RECORDED) == FORWARDED
    assert tap.done
    assert tap.upstream_id == "chatcmpl-1" and tap.model == "up-1" and tap.created == 7
    assert tap.usage is not None
    assert (tap.usage.prompt_tokens, tap.usage.completion_tokens) == (12, 3)
    assert tap.events == 4
    assert tap.delivered_chars == len("Hello, wörld")


@given(st.lists(st.integers(min_value=0, max_value=len(RECORDED)), max_size=30))
def test_any_split_of_a_recorded_stream_forwards_the_same_events(cuts: list[int]) -> None:
    tap = StreamTap()
    assert _feed_in_pieces(tap, RECORDED, cuts) == FORWARDED
    assert tap.done
    assert tap.usage is not None and tap.usage.total_tokens == 15


@given(st.lists(st.integers(min_value=0, max_value=len(RECORDED) * 2), max_size=30))
def test_any_split_of_a_crlf_stream_forwards_the_same_events(cuts: list[int]) -> None:
    crlf = RECORDED.replace(b"\n", b"\r\n")
    tap = StreamTap()
    forwarded = _feed_in_pieces(tap, crlf, [cut % (len(crlf) + 1) for cut in cuts])
    assert forwarded == FORWARDED.replace(b"\n", b"\r\n")
    assert tap.done and tap.usage is not None


def test_an_incomplete_event_waits_for_its_end() -> None:
    tap = StreamTap()
    event = CONTENT_EVENTS[0]
    assert tap.feed(event[:-1]) == b""
    assert tap.feed(event[-1:]) == event


FINISH_EVENT = sse_event({**BASE, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})


def test_the_finishing_chunk_is_kept_back_and_carries_the_metadata() -> None:
    tap = StreamTap()
    recorded = b"".join([*CONTENT_EVENTS, FINISH_EVENT, USAGE_EVENT, b"data: [DONE]\n\n"])
    assert tap.feed(recorded) == b"".join(CONTENT_EVENTS)
    events = sse_events(tap.closing_events(METADATA, {}, cost_micros=4))
    assert events[-1] == "[DONE]"
    [last] = [json.loads(event) for event in events[:-1]]  # no usage chunk: not asked
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["metadata"] == METADATA


def test_the_usage_chunk_goes_out_only_when_the_client_asked() -> None:
    tap = StreamTap(client_wants_usage=True)
    recorded = b"".join([*CONTENT_EVENTS, FINISH_EVENT, USAGE_EVENT, b"data: [DONE]\n\n"])
    tap.feed(recorded)
    closing = tap.closing_events(METADATA, {"prompt_tokens": 0}, cost_micros=250)
    finishing, usage_chunk, done = sse_events(closing)
    assert done == "[DONE]"
    assert json.loads(finishing)["metadata"] == METADATA
    usage_event = json.loads(usage_chunk)
    assert usage_event["choices"] == [] and "metadata" not in usage_event
    assert usage_event["usage"] == {**USAGE, "cost": 0.00025}  # the upstream's own usage
    assert '"cost":0.00025' in usage_chunk  # written from the exact decimal


def test_a_later_chunk_with_choices_releases_the_kept_back_one() -> None:
    tap = StreamTap()
    out = tap.feed(FINISH_EVENT + CONTENT_EVENTS[0])
    assert out == b"data: " + sse_events(FINISH_EVENT)[0].encode() + b"\n\n" + CONTENT_EVENTS[0]


def test_a_stream_without_usage_gets_a_synthesized_final_event() -> None:
    tap = StreamTap(client_wants_usage=True)
    tap.feed(b"".join(CONTENT_EVENTS))  # the upstream broke off: no usage, no [DONE]
    assert tap.usage is None and not tap.done
    assert tap.delivered_tokens_estimate() == 3  # 12 characters at 4 per token
    usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    events = sse_events(tap.closing_events(METADATA, usage))
    assert events[-1] == "[DONE]"
    finishing, final = json.loads(events[0]), json.loads(events[1])
    assert finishing["choices"] == [{"index": 0, "delta": {}, "finish_reason": None}]
    assert finishing["metadata"] == METADATA
    assert final["object"] == "chat.completion.chunk"
    assert final["id"] == "chatcmpl-1" and final["model"] == "up-1" and final["created"] == 7
    assert final["usage"] == usage
    assert final["choices"] == []


def test_a_stream_with_no_events_synthesizes_from_metadata() -> None:
    tap = StreamTap()
    final = json.loads(sse_events(tap.closing_events(METADATA, {}))[0])
    assert final["id"] == "req_1" and final["model"] == "up-1"
    assert tap.delivered_tokens_estimate() == 0


def test_usage_on_a_content_chunk_is_forwarded_and_still_captured() -> None:
    tap = StreamTap(client_wants_usage=True)
    event = sse_event(_chunk("x", usage=USAGE))
    assert tap.feed(event) == event
    assert tap.usage is not None and tap.usage.total_tokens == 15
    final = json.loads(sse_events(tap.closing_events(METADATA, USAGE))[1])
    assert final["usage"] == USAGE


def test_foreign_events_pass_through_untouched() -> None:
    tap = StreamTap()
    odd = b"event: ping\ndata: not json\n\n" + b"retry: 100\n\n"
    assert tap.feed(odd) == odd
    assert tap.events == 0


def test_reasoning_and_tool_call_deltas_count_as_delivered() -> None:
    tool_calls = [{"index": 0, "function": {"arguments": "{}"}}]
    chunk = {
        **BASE,
        "choices": [{"delta": {"reasoning_content": "abcd", "tool_calls": tool_calls}}],
    }
    tap = StreamTap()
    tap.feed(sse_event(chunk))
    assert tap.delivered_chars == 4 + len(json.dumps(tool_calls))  # the raw JSON as sent


def test_null_tool_calls_deliver_nothing_and_every_choice_counts() -> None:
    chunk = {
        **BASE,
        "choices": [
            {"index": 0, "delta": {"content": "ab", "tool_calls": None}},
            {"index": 1, "delta": {"content": "cde"}, "finish_reason": "stop"},
            {"index": 2, "text": "fg", "delta": None},
        ],
    }
    tap = StreamTap()
    assert tap.feed(sse_event(chunk)) == b""  # a choice finished: kept back for metadata
    assert tap.delivered_chars == 2 + 3 + 2
    later = {**BASE, "choices": [{"index": 0, "delta": {"content": "h"}}]}
    forwarded = tap.feed(sse_event(later))  # a later chunk with choices releases it
    assert forwarded == sse_event(chunk) + sse_event(later)
    assert tap.delivered_chars == 8


@pytest.mark.parametrize(
    ("original", "expected"),
    [
        (b'{"a":1}', {"a": 1, "metadata": {"k": "v"}}),
        (b"{}", {"metadata": {"k": "v"}}),
        (b'{"metadata": {"u": "1", "k": "x"}}', {"metadata": {"u": "1", "k": "v"}}),
        (
            b'{"usage": {"total_tokens": 3}}',
            {"usage": {"total_tokens": 3, "cost": 1.5e-05}, "metadata": {"k": "v"}},
        ),
    ],
)
def test_relay_fields_merge_with_the_upstreams_metadata(
    original: bytes, expected: dict[str, Any]
) -> None:
    assert json.loads(with_relay_fields(original, {"k": "v"}, 15)) == expected


def test_relay_fields_refuse_what_is_not_an_object() -> None:
    with pytest.raises(ValueError):
        with_relay_fields(b"[1, 2]", {})


# Events of every shape the tap tells apart; a stream of them is read at once (one-line
# events in one split, anything else event by event) and byte by byte, alike.
SHAPES = [
    sse_event(_chunk("Hel")),
    sse_event(_chunk("wörld \\n")),
    sse_event({"choices": [{"index": 0, "delta": {"content": "no ids"}}]}),
    FINISH_EVENT,
    USAGE_EVENT,
    b"data:" + json.dumps(_chunk("tight")).encode() + b"\n\n",  # no blank after the colon
    b": keep-alive\n\n",
    b"event: note\ndata: " + json.dumps(_chunk("named")).encode() + b"\n\n",
    b"data: not json\n\n",
    b'data: {"choices": [], "usage": {"prompt_tokens": -1}}\n\n',
    b"data: [DONE]\n\n",
    sse_event(_chunk("crlf")).replace(b"\n", b"\r\n"),  # LF and CRLF events may mix
]


def _tap_state(tap: StreamTap) -> tuple[object, ...]:
    usage = tap.usage.total_tokens if tap.usage is not None else None
    closing = tap.closing_events(METADATA, {}, cost_micros=4)
    ids = (tap.upstream_id, tap.model, tap.created)
    return (tap.done, tap.events, tap.delivered_chars, tap.usage_invalid, usage, ids, closing)


@given(st.lists(st.sampled_from(SHAPES), max_size=12), st.booleans())
def test_a_stream_read_at_once_forwards_what_it_does_byte_by_byte(
    events: list[bytes], wants_usage: bool
) -> None:
    stream = b"".join(events)
    whole, pieces = StreamTap(wants_usage), StreamTap(wants_usage)
    assert whole.feed(stream) == _feed_in_pieces(pieces, stream, list(range(len(stream))))
    assert _tap_state(whole) == _tap_state(pieces)


def test_one_line_events_at_once_keep_back_and_release_in_order() -> None:
    tap = StreamTap(client_wants_usage=True)
    stream = b"".join([CONTENT_EVENTS[0], FINISH_EVENT, CONTENT_EVENTS[1], FINISH_EVENT])
    released = b"data: " + sse_events(FINISH_EVENT)[0].encode() + b"\n\n"
    tail = USAGE_EVENT + b"data: [DONE]\n\n" + b'data: {"id": "x'
    assert tap.feed(stream + tail) == CONTENT_EVENTS[0] + released + CONTENT_EVENTS[1]
    assert tap.done and tap.usage is not None and tap.events == 5
    assert tap.feed(b'"}\n\n') == b'data: {"id": "x"}\n\n'  # the rest, when it ends


def test_the_ids_come_from_the_first_event_that_has_them() -> None:
    tap = StreamTap()
    nameless = {"model": "early", "choices": [{"index": 0, "delta": {"content": "a"}}]}
    later = {**BASE, "id": "chatcmpl-2", "model": "late", "created": 9}
    tap.feed(sse_event(nameless) + sse_event(_chunk("b", **later)) + sse_event(_chunk("c")))
    assert (tap.upstream_id, tap.model, tap.created) == ("chatcmpl-2", "late", 9)
