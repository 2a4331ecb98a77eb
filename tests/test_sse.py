"""Tests for relay.http.sse: the streaming response, and its body stopped when the client leaves.

The response runs its body inline; noticing the client leave is ``CancelOnDisconnect``'s
(relay.http.disconnect), which every route returning it runs under, so the disconnect tests
serve it that way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from relay.http.disconnect import CancelOnDisconnect
from relay.http.sse import EventStreamResponse


@dataclass
class Body:
    """A body generator that records whether its cleanup ran."""

    parts: list[bytes]
    wait_after: bool = False  # after its parts, wait (like a silent upstream)
    closed: bool = False
    started: bool = False

    async def run(self) -> AsyncIterator[bytes]:
        self.started = True
        try:
            for part in self.parts:
                yield part
            if self.wait_after:
                await asyncio.sleep(10)
        finally:
            self.closed = True


@dataclass
class Client:
    """ASGI receive/send of a client that disconnects when ``leave`` is set."""

    leave: asyncio.Event = field(default_factory=asyncio.Event)
    sent: list[dict[str, Any]] = field(default_factory=list)
    send_delay_s: float = 0.0
    body_read: bool = False

    async def receive(self) -> dict[str, Any]:
        if not self.body_read:
            self.body_read = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if self.send_delay_s:
            await asyncio.sleep(self.send_delay_s)
        self.sent.append(message)

    @property
    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body"]


_SCOPE = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}


async def _serve(body: Body, client: Client) -> None:
    """The response alone, as an ASGI app."""
    response = EventStreamResponse(body.run(), {"x-relay-request-id": "req_1"})
    await asyncio.wait_for(response(dict(_SCOPE), client.receive, client.send), timeout=2)


async def _serve_as_relay(body: Body, client: Client) -> None:
    """The response returned by a handler, under ``CancelOnDisconnect`` as relay's routes."""

    async def handler(request: Request) -> EventStreamResponse:
        await request.body()
        return EventStreamResponse(body.run(), {"x-relay-request-id": "req_1"})

    app = CancelOnDisconnect(handler)
    await asyncio.wait_for(app(dict(_SCOPE), client.receive, client.send), timeout=2)


async def test_the_body_is_sent_then_ended_and_closed() -> None:
    body, client = Body([b"data: 1\n\n", b"data: 2\n\n"]), Client()
    await _serve(body, client)
    start = client.sent[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"cache-control"] == b"no-cache"
    assert headers[b"x-relay-request-id"] == b"req_1"
    assert client.bodies == [b"data: 1\n\n", b"data: 2\n\n", b""]
    assert client.sent[-1]["more_body"] is False
    assert body.closed


async def test_an_empty_body_still_answers_and_ends() -> None:
    body, client = Body([]), Client()
    await _serve(body, client)
    assert client.sent[0]["type"] == "http.response.start"
    assert client.bodies == [b""]
    assert body.closed


async def test_a_disconnect_while_the_body_waits_stops_it_at_once() -> None:
    body, client = Body([b"data: 1\n\n"], wait_after=True), Client()
    task = asyncio.create_task(_serve_as_relay(body, client))
    while not client.bodies:
        await asyncio.sleep(0.001)
    client.leave.set()
    started = asyncio.get_running_loop().time()
    await task
    assert asyncio.get_running_loop().time() - started < 0.5
    assert body.closed
    assert client.bodies == [b"data: 1\n\n"]  # no clean end: the client is gone


async def test_a_client_gone_before_the_first_write_still_runs_the_body_cleanup() -> None:
    body, client = Body([b"data: 1\n\n"], wait_after=True), Client(send_delay_s=0.05)
    client.leave.set()  # the disconnect is already queued when the response starts
    await _serve_as_relay(body, client)
    assert body.started and body.closed


async def test_the_body_runs_in_the_request_task_with_no_task_beside_it() -> None:
    """A stream costs no task of its own: the body's steps run in the caller's task."""
    seen: list[asyncio.Task[Any] | None] = []

    async def body() -> AsyncIterator[bytes]:
        for part in (b"data: 1\n\n", b"data: 2\n\n"):
            seen.append(asyncio.current_task())
            yield part

    before = len(asyncio.all_tasks())
    client = Client()
    response = EventStreamResponse(body(), {})

    async def send(message: dict[str, Any]) -> None:
        assert len(asyncio.all_tasks()) == before
        await client.send(message)

    await response(dict(_SCOPE), client.receive, send)
    assert seen == [asyncio.current_task()] * 2
    assert client.bodies == [b"data: 1\n\n", b"data: 2\n\n", b""]


async def test_a_finished_stream_lets_the_listener_end_by_itself() -> None:
    """The disconnect the server queues with the last message ends the watcher: not cancelled."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    queue.put_nowait({"type": "http.request", "body": b"{}", "more_body": False})
    watchers: list[asyncio.Task[Any]] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message["more_body"]:
            watchers.extend(t for t in asyncio.all_tasks() if t is not asyncio.current_task())
            queue.put_nowait({"type": "http.disconnect"})  # as hypercorn does

    async def handler(request: Request) -> EventStreamResponse:
        await request.body()
        await asyncio.sleep(0)  # the listener starts watching
        return EventStreamResponse(Body([b"data: 1\n\n"]).run(), {})

    await CancelOnDisconnect(handler)(dict(_SCOPE), queue.get, send)
    assert len(watchers) == 1
    for _ in range(2):  # the watcher's turn, then the listener's deferred close
        await asyncio.sleep(0)
    assert watchers[0].done()
    # It read the disconnect: a watcher cancelled once woken leaves it queued (and made
    # ``Queue.get``'s clean-up raise a ValueError on the way).
    assert queue.empty()


async def test_a_finished_stream_whose_server_sends_nothing_more_stops_the_listener() -> None:
    """No disconnect after the answer: the listener's watcher is cancelled, not left waiting."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    queue.put_nowait({"type": "http.request", "body": b"{}", "more_body": False})
    watchers: list[asyncio.Task[Any]] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message["more_body"]:
            watchers.extend(t for t in asyncio.all_tasks() if t is not asyncio.current_task())

    async def handler(request: Request) -> EventStreamResponse:
        await request.body()
        await asyncio.sleep(0)  # the listener starts watching
        return EventStreamResponse(Body([b"data: 1\n\n"]).run(), {})

    await CancelOnDisconnect(handler)(dict(_SCOPE), queue.get, send)
    assert len(watchers) == 1
    for _ in range(2):
        await asyncio.sleep(0)
    assert watchers[0].done()
    assert not queue._getters  # type: ignore[attr-defined]  # it let go of receive
