"""relay.http.responses: the body read from ``receive``, and the billed answer's headers."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message

from relay.admission.exchange import Exchange
from relay.errors import RequestTooLarge
from relay.http.responses import JSONAnswer, json_response, read_body
from relay.identity.auth import ANONYMOUS


class Messages:
    """A server's ``receive`` giving ``messages`` in turn, counting the reads."""

    def __init__(self, messages: Iterable[Message]) -> None:
        self._messages = list(messages)
        self.reads = 0

    async def __call__(self) -> Message:
        self.reads += 1
        return self._messages.pop(0)


def request_with(receive: Messages, headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers or []}
    return Request(scope, receive)


def part(body: bytes, more: bool) -> Message:
    return {"type": "http.request", "body": body, "more_body": more}


async def test_a_one_message_body_is_read_once_and_kept_for_starlette() -> None:
    receive = Messages([part(b'{"a": 1}', more=False)])
    request = request_with(receive)
    assert await read_body(request, 100) == b'{"a": 1}'
    # Starlette's own readers return the kept body instead of waiting for another.
    assert await request.body() == b'{"a": 1}'
    assert [chunk async for chunk in request.stream()] == [b'{"a": 1}', b""]
    assert await read_body(request, 100) == b'{"a": 1}'
    assert receive.reads == 1


async def test_a_body_in_parts_is_joined() -> None:
    receive = Messages([part(b"ab", more=True), part(b"", more=True), part(b"cd", more=False)])
    assert await read_body(request_with(receive), 4) == b"abcd"
    assert receive.reads == 3


async def test_a_body_growing_past_the_limit_is_413_and_the_rest_drained() -> None:
    receive = Messages([part(b"abc", more=True), part(b"def", more=True), part(b"g", more=False)])
    with pytest.raises(RequestTooLarge):
        await read_body(request_with(receive), 4)
    assert receive.reads == 3  # read to its end, so the client can read the 413


async def test_a_single_message_over_the_limit_is_413() -> None:
    with pytest.raises(RequestTooLarge):
        await read_body(request_with(Messages([part(b"abcdef", more=False)])), 4)


async def test_a_declared_length_over_the_limit_is_413_before_the_body() -> None:
    receive = Messages([part(b"abcdef", more=False)])
    request = request_with(receive, [(b"content-length", b"6")])
    with pytest.raises(RequestTooLarge):
        await read_body(request, 4)
    assert receive.reads == 1  # slightly over: drained, not left unread


async def test_a_client_leaving_mid_body_is_starlettes_client_disconnect() -> None:
    receive = Messages([part(b"ab", more=True), {"type": "http.disconnect"}])
    with pytest.raises(ClientDisconnect):
        await read_body(request_with(receive), 100)


@pytest.mark.parametrize("endpoint", ["chat", "messages"])
def test_the_billed_answer_has_json_responses_headers_in_order(endpoint: str) -> None:
    exchange = Exchange("req_abc123", endpoint, ANONYMOUS)
    exchange.cost_micros = 1234
    body = b'{"id": "x"}'
    answer = JSONAnswer(body, exchange.raw_headers())
    plain = json_response(body, headers=exchange.headers())
    assert answer.raw_headers == plain.raw_headers
    assert (answer.status_code, answer.body, answer.background) == (200, body, None)
    assert answer.headers["x-relay-cost-micros"] == "1234"
