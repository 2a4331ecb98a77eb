"""relay.upstream.deadline: one reusable timer behaves as an ``asyncio.timeout`` per wait.

Plus the aiohttp client's phases that share one (headers, then the body or each chunk),
against raw local sockets: a slow body, a stream that goes idle after chunks, a stream
outliving its overall deadline, and a consumer that is slow between chunks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from relay.upstream.client import AiohttpUpstream, Timeouts, UpstreamTimedOut
from relay.upstream.deadline import Deadline

FAST = Timeouts(connect_s=1.0, first_byte_s=1.0, idle_s=1.0, total_s=1.0)


async def test_a_wait_past_its_bound_raises_timeout_error() -> None:
    deadline = Deadline()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        with deadline.bound(0.05):
            await asyncio.sleep(5)
    assert time.monotonic() - started < 1.0
    deadline.close()


async def test_waits_within_their_bounds_pass_however_long_the_whole() -> None:
    """The timer armed for the first wait fires during a later one and re-arms for it."""
    deadline = Deadline()
    started = time.monotonic()
    for _ in range(4):
        with deadline.bound(0.1):
            await asyncio.sleep(0.04)
        await asyncio.sleep(0.04)  # between waits: not counted
    assert time.monotonic() - started > 0.3  # well past the first wait's bound
    deadline.close()


async def test_a_timer_firing_between_waits_cancels_nothing() -> None:
    deadline = Deadline()
    with deadline.bound(0.02):
        await asyncio.sleep(0)
    await asyncio.sleep(0.1)  # the armed timer fires here, with no wait in progress
    with deadline.bound(1.0):
        await asyncio.sleep(0.01)
    deadline.close()


async def test_a_shorter_bound_after_a_longer_one_is_kept() -> None:
    deadline = Deadline()
    with deadline.bound(30):
        await asyncio.sleep(0)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        with deadline.bound(0.05):
            await asyncio.sleep(5)
    assert time.monotonic() - started < 1.0
    deadline.close()


async def test_someone_elses_cancellation_stays_a_cancellation() -> None:
    entered = asyncio.Event()

    async def waiter() -> None:
        deadline = Deadline()
        try:
            with deadline.bound(5):
                entered.set()
                await asyncio.sleep(5)
        finally:
            deadline.close()

    task = asyncio.ensure_future(waiter())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_its_own_expiry_is_uncancelled() -> None:
    deadline = Deadline()
    with pytest.raises(TimeoutError):
        with deadline.bound(0.01):
            await asyncio.sleep(1)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.01)  # the task goes on normally
    deadline.close()


async def test_each_wait_bounds_the_task_that_waits() -> None:
    """A stream's first chunk is read by the handler, the rest by the response's task."""
    deadline = Deadline()
    with deadline.bound(0.2):
        await asyncio.sleep(0)

    async def other() -> None:
        with deadline.bound(0.05):
            await asyncio.sleep(5)

    with pytest.raises(TimeoutError):
        await asyncio.ensure_future(other())
    await asyncio.sleep(0.25)  # this task is not cancelled by the first timer
    deadline.close()


async def test_a_deadline_given_its_task_bounds_that_task() -> None:
    """The request body's Deadline gets the task from the scope instead of current_task."""
    task = asyncio.current_task()
    assert task is not None
    deadline = Deadline(task)
    with deadline.bound(1.0):
        await asyncio.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        with deadline.bound(0.05):
            await asyncio.sleep(5)
    assert time.monotonic() - started < 1.0
    assert task.cancelling() == 0
    deadline.close()


async def test_close_drops_the_timer() -> None:
    deadline = Deadline()
    with deadline.bound(0.02):
        await asyncio.sleep(0)
    deadline.close()
    await asyncio.sleep(0.05)


async def test_deadlines_of_one_loop_share_its_timer_and_each_fires_in_time() -> None:
    """A shorter wait entered after a longer one re-arms the shared timer earlier; one given
    up at the top of the heap is dropped and the next is still due on time."""
    long_wait, short_wait, given_up = Deadline(), Deadline(), Deadline()
    with given_up.bound(0.02):
        await asyncio.sleep(0)
    given_up.close()  # dead, and the earliest entry of the heap

    async def wait_long() -> None:
        with long_wait.bound(0.3):
            await asyncio.sleep(5)

    waiting = asyncio.ensure_future(wait_long())
    await asyncio.sleep(0)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        with short_wait.bound(0.05):
            await asyncio.sleep(5)
    assert time.monotonic() - started < 0.25  # the short one did not wait for the long one
    with pytest.raises(TimeoutError):
        await waiting
    assert time.monotonic() - started < 1.0
    for deadline in (long_wait, short_wait):
        deadline.close()


async def test_given_up_entries_do_not_pile_up() -> None:
    """Requests that each enter and give up a wait keep the shared heap about the size of the
    waits in progress, not of every wait in the last timeout."""
    from relay.upstream import deadline as module

    for _ in range(5 * module._SWEEP_AT):
        deadline = Deadline()
        with deadline.bound(300):
            pass
        deadline.close()
    clock = module._clock_of(asyncio.get_running_loop())
    assert len(clock._heap) <= 2 * module._SWEEP_AT


# ------------------------------------------------ the aiohttp client's phases on one Deadline

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> AsyncIterator[str]:
    """One URL on a local server running ``handler``; every connection closed at the end."""
    writers: list[asyncio.StreamWriter] = []
    tasks: list[asyncio.Task[None]] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        await handler(reader, writer)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1/x"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in writers:
            writer.close()
        await server.wait_closed()
        await asyncio.sleep(0.01)  # let the transports finish closing


def _chunked_server(chunks: int, delay_s: float, *, first_delay_s: float = 0.0) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        await writer.drain()
        try:
            await asyncio.sleep(first_delay_s)
            for _ in range(chunks):
                event = b"data: {}\n\n"
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                await asyncio.sleep(delay_s)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    return handler


@pytest.fixture
async def client() -> AsyncIterator[AiohttpUpstream]:
    upstream = AiohttpUpstream(max_connections=4, connect_timeout_s=1.0)
    yield upstream
    await upstream.aclose()


async def _read_stream(client: AiohttpUpstream, url: str, timeouts: Timeouts) -> int:
    response = await client.send("POST", url, headers={}, body=b"{}", timeouts=timeouts)
    try:
        return len([chunk async for chunk in response.chunks()])
    finally:
        await response.aclose()


async def test_a_stream_with_steady_chunks_outlives_its_idle_timeout(
    client: AiohttpUpstream,
) -> None:
    async for url in _serve(_chunked_server(8, 0.03)):
        timeouts = Timeouts(connect_s=1, first_byte_s=1, idle_s=0.1, total_s=1)
        started = time.monotonic()
        assert await _read_stream(client, url, timeouts) >= 1
        assert time.monotonic() - started > 0.2  # longer than idle_s: re-armed, not expired


async def test_a_stream_idle_after_some_chunks_times_out(client: AiohttpUpstream) -> None:
    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(2):
            writer.write(b"6\r\ndata: \r\n")
            await writer.drain()
            await asyncio.sleep(0.03)
        await asyncio.sleep(2)
        writer.close()

    async for url in _serve(stalls):
        timeouts = Timeouts(connect_s=1, first_byte_s=1, idle_s=0.1, total_s=1)
        response = await client.send("POST", url, headers={}, body=b"{}", timeouts=timeouts)
        received = 0
        started = time.monotonic()
        with pytest.raises(UpstreamTimedOut, match="idle"):
            async for _ in response.chunks():
                received += 1
        assert received >= 1
        assert time.monotonic() - started < 1.0
        await response.aclose()


async def test_a_stream_past_its_overall_deadline_times_out(client: AiohttpUpstream) -> None:
    async for url in _serve(_chunked_server(50, 0.02)):
        timeouts = Timeouts(connect_s=1, first_byte_s=1, idle_s=0.5, total_s=1, stream_s=0.15)
        with pytest.raises(UpstreamTimedOut, match="overall deadline"):
            await _read_stream(client, url, timeouts)


async def test_a_slow_consumer_is_not_an_idle_upstream(client: AiohttpUpstream) -> None:
    """Time spent while the chunk is out (the client being written to) is not a wait."""
    async for url in _serve(_chunked_server(3, 0.0)):
        timeouts = Timeouts(connect_s=1, first_byte_s=1, idle_s=0.05, total_s=1)
        response = await client.send("POST", url, headers={}, body=b"{}", timeouts=timeouts)
        received = 0
        async for _ in response.chunks():
            received += 1
            await asyncio.sleep(0.1)  # longer than idle_s, between waits
        assert received >= 1
        await response.aclose()


async def test_a_whole_body_slower_than_total_times_out(client: AiohttpUpstream) -> None:
    async def slow_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{")
        await writer.drain()
        await asyncio.sleep(2)
        writer.close()

    async for url in _serve(slow_body):
        timeouts = Timeouts(connect_s=1, first_byte_s=1, idle_s=1, total_s=0.1)
        response = await client.send("POST", url, headers={}, body=b"{}", timeouts=timeouts)
        started = time.monotonic()
        with pytest.raises(UpstreamTimedOut, match="body"):
            await response.read(1000)
        assert time.monotonic() - started < 1.0


async def test_a_body_that_arrives_in_time_is_read_whole(client: AiohttpUpstream) -> None:
    async def body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"}")
        await writer.drain()
        writer.close()

    async for url in _serve(body):
        response = await client.send("POST", url, headers={}, body=b"{}", timeouts=FAST)
        assert await response.read() == b"{}"
