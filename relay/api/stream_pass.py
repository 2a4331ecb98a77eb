"""Passing an upstream's stream through to the client, settled exactly once however it
ends, then draining what the upstream still sends (a step of the flow, relay.api.flow)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from relay.admission.exchange import Exchange
from relay.api.flow import mark_abandoned, upstream_broke_off
from relay.errors import RelayError
from relay.state import RelayState
from relay.upstream.client import UpstreamFailure
from relay.upstream.routing import OpenedRoute

__all__ = ["DRAIN_DEADLINE_S", "StreamTapLike", "drain_upstream", "pass_stream"]

log = logging.getLogger(__name__)

DRAIN_DEADLINE_S = 1.0


class StreamTapLike(Protocol):
    """What ``pass_stream`` needs of a dialect's tap (``upstream.stream_openai`` and friends)."""

    done: bool

    def feed(self, chunk: bytes) -> bytes: ...


async def pass_stream(
    state: RelayState,
    exchange: Exchange,
    opened: OpenedRoute,
    tap: StreamTapLike,
    settle: Callable[[], None],
    ending: Callable[[RelayError | None], bytes],
) -> AsyncIterator[bytes]:
    """Pass the upstream's events through as they arrive; settle exactly once, whatever ends it.

    ``settle`` must be idempotent (the ticket makes it so): it runs in the ``finally`` when the
    client leaves or shutdown cuts the stream, and otherwise just before ``ending(failure)``,
    the dialect's last events (relay's metadata, and the error if the upstream broke off).

    Once the tap saw the stream's end (``done``) the bill is known: relay settles and sends
    the ending at once, then reads what the upstream still sends (``drain_upstream``) before
    closing, so its connection is reused cleanly; ``settle`` runs once more after the drain
    (a no-op that lets the dialect notice usage reported too late to bill).
    """
    failure: RelayError | None = None
    ended = False
    chunks = opened.rest_of_stream()
    try:
        exchange.mark_first_byte()
        forward = tap.feed(opened.first_chunk or b"")
        if forward:
            yield forward
        if not tap.done:
            async for chunk in chunks:
                forward = tap.feed(chunk)
                if forward:
                    yield forward
                if tap.done:
                    break
        ended = True
    except UpstreamFailure as exc:
        ended = True
        failure = upstream_broke_off(exc, "stream")
    finally:
        if not ended:  # cancelled or closed early: the client went away (or shutdown)
            await opened.close()
            mark_abandoned(state, exchange)
            settle()
    try:
        if failure is not None:
            exchange.error_code = failure.code
            exchange.status = failure.status
        settle()
        yield ending(failure)
        if tap.done and failure is None:
            await drain_upstream(chunks, tap, exchange.request_id)
            settle()
    finally:
        await opened.close()


async def drain_upstream(chunks: AsyncIterator[bytes], tap: StreamTapLike, request_id: str) -> None:
    """Read an upstream stream to its end after its last event, for ``DRAIN_DEADLINE_S`` at most.

    Nothing read here reaches the client (its stream already ended); the tap still sees it.
    Closing mid-body would drop a connection the pool could reuse, and lose what an upstream
    reports after its final event. An upstream that keeps sending is cut at the deadline.

    The deadline is one loop timer that cancels the task, as ``asyncio.timeout`` does, without
    its object, its enter and exit coroutines and its rescheduling: the drain runs once per
    stream and usually ends at once, and that machinery cost about 20,000 instructions of it.
    """
    task = asyncio.current_task()
    assert task is not None
    cancelling = task.cancelling()
    fired = False

    def cut() -> None:
        nonlocal fired
        fired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(DRAIN_DEADLINE_S, cut)
    try:
        async for chunk in chunks:
            tap.feed(chunk)
    except asyncio.CancelledError:
        # Only our own cut ends the drain quietly; anyone else's cancellation goes on.
        if not fired or task.uncancel() > cancelling:
            raise
        log.info("request %s: upstream still sending after its last event; closed", request_id)
    except UpstreamFailure:
        pass  # the answer was complete and settled: a broken tail changes nothing
    else:
        if fired:  # cut just as the stream ended: counted back, as asyncio.timeout does
            task.uncancel()
    finally:
        timer.cancel()
