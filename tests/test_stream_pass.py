"""relay.api.stream_pass.drain_upstream: bounded by its own timer, cancellable from outside."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from relay.api import stream_pass
from relay.api.stream_pass import drain_upstream


class _Tap:
    done = True

    def __init__(self) -> None:
        self.fed: list[bytes] = []

    def feed(self, chunk: bytes) -> bytes:
        self.fed.append(chunk)
        return b""


async def _endless() -> AsyncIterator[bytes]:
    while True:
        await asyncio.sleep(0.01)
        yield b"data: more\n\n"


async def _finite() -> AsyncIterator[bytes]:
    yield b"data: late usage\n\n"


async def test_a_drain_that_ends_reads_everything_and_leaves_no_timer_or_cancel() -> None:
    tap = _Tap()
    await drain_upstream(_finite(), tap, "req_1")
    assert tap.fed == [b"data: late usage\n\n"]
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.05)  # nothing fires later either


async def test_an_upstream_that_keeps_sending_is_cut_quietly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stream_pass, "DRAIN_DEADLINE_S", 0.05)
    tap = _Tap()
    started = asyncio.get_running_loop().time()
    await drain_upstream(_endless(), tap, "req_1")
    assert 0.04 <= asyncio.get_running_loop().time() - started < 1.0
    assert tap.fed  # it read until the cut
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # and the task is not cancelled again afterwards


async def test_a_cancellation_from_outside_still_cancels_the_drain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stream_pass, "DRAIN_DEADLINE_S", 5.0)
    drain = asyncio.create_task(drain_upstream(_endless(), _Tap(), "req_1"))
    await asyncio.sleep(0.03)
    drain.cancel()
    with pytest.raises(asyncio.CancelledError):
        await drain
