"""A background step run on a fixed interval for as long as the server runs.

The erasure job, the video poller, retention and the housekeeping sweep all have the same
life: started in the lifespan, one round every interval, a failing round logged and the
next one run on time, cancelled at shutdown. ``PeriodicTask`` is that life, written once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

__all__ = ["PeriodicTask"]


class PeriodicTask:
    """Runs ``step`` every ``interval_s`` seconds, the first time after ``first_after_s``."""

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[object]],
        *,
        interval_s: float,
        first_after_s: float | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.name = name
        self._step = step
        self.interval_s = interval_s
        self.first_after_s = interval_s if first_after_s is None else first_after_s
        self._log = log or logging.getLogger(__name__)
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the loop (once; a second call does nothing)."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        """Cancel the loop and wait for it; a round cut short is the next start's to redo."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self) -> None:
        await asyncio.sleep(self.first_after_s)
        while True:
            try:
                await self._step()
            except Exception as exc:  # one failed round (storage, a bug) must not stop the rest
                self._log.error("%s round failed: %s: %s", self.name, type(exc).__name__, exc)
            await asyncio.sleep(self.interval_s)
