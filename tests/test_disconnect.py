"""relay.http.disconnect: a finished request leaves nothing for the cyclic GC.

Under held load relay runs with raised GC thresholds (relay.process_memory.tune_gc), so garbage
that only the cyclic collector can free piles up in the older generations: the watcher's
cancellation once left one reference cycle per request (docs/performance.md, "Regression
hunt of 2026-12-05").
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message

from relay.http.disconnect import CancelOnDisconnect, _Listener
from relay.http.sse import EventStreamResponse

_SCOPE = {"type": "http", "method": "POST", "path": "/v1/x", "headers": [], "query_string": b""}


@pytest.fixture
def saved_garbage() -> Iterator[list[object]]:
    """What the collector finds unreachable while the test runs, kept instead of freed."""
    gc.collect()
    gc.garbage.clear()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


class _ServerReceive:
    """A server's ``receive`` as hypercorn's: a queue the client's messages arrive on."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.queue.put_nowait({"type": "http.request", "body": b"{}", "more_body": False})

    async def __call__(self) -> Message:
        return await self.queue.get()


async def _read_and_answer(request: Request) -> ASGIApp:
    await request.body()
    await asyncio.sleep(0)  # the watcher starts listening meanwhile
    return Response(b"ok")


async def _serve_one(app: CancelOnDisconnect, receive: _ServerReceive) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            receive.queue.put_nowait({"type": "http.disconnect"})  # as hypercorn does

    await asyncio.ensure_future(app(dict(_SCOPE), receive, send))
    for _ in range(3):  # the watcher's cancellation runs on the next turns of the loop
        await asyncio.sleep(0)
    return sent


async def test_an_answered_request_leaves_no_cycle_for_the_collector(
    saved_garbage: list[object],
) -> None:
    sent = await _serve_one(CancelOnDisconnect(_read_and_answer), _ServerReceive())
    assert sent[0]["status"] == 200
    gc.collect()
    assert [o for o in saved_garbage if isinstance(o, _Listener | asyncio.Task)] == []


async def test_a_client_leaving_still_cancels_the_handler(saved_garbage: list[object]) -> None:
    receive = _ServerReceive()
    cancelled = asyncio.Event()

    async def waits_for_the_upstream(request: Request) -> ASGIApp:
        await request.body()
        receive.queue.put_nowait({"type": "http.disconnect"})
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Response(b"never")

    sent = await _serve_one(CancelOnDisconnect(waits_for_the_upstream), receive)
    assert cancelled.is_set()
    assert sent == []  # nobody is listening: no answer


async def test_a_plain_answer_leaves_the_watcher_to_the_servers_disconnect() -> None:
    receive = _ServerReceive()
    watchers: list[asyncio.Task[object]] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            # The watcher still waits on the server's queue: nothing was cancelled.
            watchers.extend(t for t in asyncio.all_tasks() if t is not asyncio.current_task())
            assert len(receive.queue._getters) == 1  # type: ignore[attr-defined]
        elif not message.get("more_body"):
            receive.queue.put_nowait({"type": "http.disconnect"})  # as hypercorn does

    await CancelOnDisconnect(_read_and_answer)(dict(_SCOPE), receive, send)
    assert len(watchers) == 1
    await asyncio.sleep(0)
    assert watchers[0].done() and not watchers[0].cancelled()  # ended by itself


async def test_an_answer_that_fails_to_go_out_cancels_the_watcher() -> None:
    receive = _ServerReceive()
    watchers: list[asyncio.Task[object]] = []

    async def send(message: Message) -> None:
        watchers.extend(t for t in asyncio.all_tasks() if t is not asyncio.current_task())
        raise OSError("the connection broke")

    with pytest.raises(OSError):
        await CancelOnDisconnect(_read_and_answer)(dict(_SCOPE), receive, send)
    await asyncio.sleep(0)
    # Cancelled (it ends quietly then): it no longer waits on the server's queue.
    assert len(watchers) == 1 and watchers[0].done()
    assert len(receive.queue._getters) == 0  # type: ignore[attr-defined]


async def test_an_answer_before_the_watcher_ever_ran_is_sent() -> None:
    async def answers_at_once(request: Request) -> ASGIApp:
        await request.body()
        return Response(b"ok")  # no await since the body: the watcher never started

    sent = await _serve_one(CancelOnDisconnect(answers_at_once), _ServerReceive())
    assert [m.get("status", m.get("body")) for m in sent] == [200, b"ok"]


async def test_a_streamed_answer_still_sees_the_client_leave() -> None:
    receive = _ServerReceive()
    closed = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        try:
            yield b"data: 1\n\n"
            receive.queue.put_nowait({"type": "http.disconnect"})
            await asyncio.sleep(30)
            yield b"never"
        finally:
            closed.set()

    async def streams(request: Request) -> ASGIApp:
        await request.body()
        return EventStreamResponse(body(), {})

    sent = await _serve_one(CancelOnDisconnect(streams), receive)
    assert closed.is_set()
    assert [m.get("body") for m in sent[1:]] == [b"data: 1\n\n"]
