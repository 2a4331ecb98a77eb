"""Tests for jobs.periodic: the one background loop shared by relay's periodic jobs."""

from __future__ import annotations

import asyncio
import logging

import pytest

from relay.jobs.periodic import PeriodicTask


async def test_a_failing_round_is_logged_and_the_next_one_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rounds: list[int] = []
    third = asyncio.Event()

    async def step() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise RuntimeError("disk on fire")
        if len(rounds) == 3:
            third.set()

    task = PeriodicTask("test-job", step, interval_s=0.001, first_after_s=0)
    with caplog.at_level(logging.ERROR):
        task.start()
        await asyncio.wait_for(third.wait(), timeout=5)
        await task.stop()
    assert rounds[:3] == [0, 1, 2]
    assert "test-job round failed: RuntimeError: disk on fire" in caplog.text
    assert not task.running


async def test_stop_cancels_a_round_in_progress_and_start_is_idempotent() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def step() -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # a round that never ends by itself
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = PeriodicTask("test-job", step, interval_s=60, first_after_s=0)
    task.start()
    task.start()  # a second start does not run a second loop
    await asyncio.wait_for(started.wait(), timeout=5)
    assert task.running
    await task.stop()
    assert cancelled.is_set() and not task.running
    await task.stop()  # stopping twice is harmless


async def test_the_first_round_waits_for_first_after_s() -> None:
    ran = asyncio.Event()

    async def step() -> None:
        ran.set()

    task = PeriodicTask("test-job", step, interval_s=0.001, first_after_s=3600)
    task.start()
    await asyncio.sleep(0.01)  # several of interval_s, far less than first_after_s
    assert not ran.is_set()
    await task.stop()
    assert task.first_after_s == 3600
    assert PeriodicTask("default", step, interval_s=7).first_after_s == 7
