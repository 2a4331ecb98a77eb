"""Tests for relay.http.sse: the streaming response that stops its body when the client leaves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

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

    async def receive(self) -> dict[str, Any]:
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if self.send_delay_s:
            await asyncio.sleep(self.send_delay_s)
        self.sent.append(message)

    @property
    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body"]


async def _serve(body: Body, client: Client) -> None:
    response = EventStreamResponse(body.run(), {"x-relay-request-id": "req_1"})
    scope = {"type": "http", "method": "POST", "path": "/"}
    await asyncio.wait_for(response(scope, client.receive, client.send), timeout=2)


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
    task = asyncio.create_task(_serve(body, client))
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
    await _serve(body, client)
    assert body.started and body.closed
