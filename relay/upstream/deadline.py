"""One reusable timer for the waits of a request, instead of an ``asyncio.timeout`` per await.

``with deadline.bound(seconds): await ...`` raises ``TimeoutError`` when the await outlives
``seconds``, exactly as ``asyncio.timeout`` does (the task is cancelled, the cancellation
turned into ``TimeoutError`` and ``uncancel``-ed; anyone else's cancellation still
propagates). The difference is the cost of re-arming it: ``asyncio.timeout`` builds a
``Timeout`` object, a coroutine for its enter and exit, and a new loop timer for every
await, which a stream pays once per chunk. Here a wait only records when it must end; the
loop timer already armed is kept when it fires no later than that, and when it fires
early it re-arms itself for the wait then in progress (or does nothing if none is). So a
stream of many chunks costs one loop timer per idle period rather than one per chunk, and
the phases of an upstream call (headers, then body) share one.

``close`` drops the timer: call it once the request's waits are over, so that no timer
outlives its request for up to its whole timeout.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

__all__ = ["Deadline"]


class Deadline:
    """The bound on the current wait of one task (one wait at a time)."""

    __slots__ = ("_loop", "_task", "_handle", "_until", "_pending_s", "_cancelling", "_fired")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._until: float | None = None  # the end of the wait in progress; None: no wait
        self._pending_s = 0.0
        self._cancelling = 0
        self._fired = False

    def bound(self, seconds: float) -> Deadline:
        """The next ``with`` block may await for ``seconds`` at most."""
        self._pending_s = seconds
        return self

    def __enter__(self) -> Deadline:
        task = asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError("Deadline must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._fired = False
        until = self._loop.time() + self._pending_s
        self._until = until
        handle = self._handle
        if handle is None or handle.when() > until:
            if handle is not None:
                handle.cancel()
            self._handle = self._loop.call_at(until, self._expire)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._until = None
        if not self._fired:
            return
        self._fired = False
        task = self._task
        assert task is not None
        # As asyncio.timeout: only a cancellation of ours becomes TimeoutError.
        if task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    def _expire(self) -> None:
        self._handle = None
        until = self._until
        if until is None:  # between waits: the next wait arms its own timer
            return
        if self._loop.time() < until:  # armed for an earlier wait: wait for this one's end
            self._handle = self._loop.call_at(until, self._expire)
            return
        task = self._task
        assert task is not None
        self._fired = True
        task.cancel()

    def close(self) -> None:
        """No more waits: drop the loop timer."""
        self._until = None
        handle = self._handle
        if handle is not None:
            handle.cancel()
            self._handle = None
