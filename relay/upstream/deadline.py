"""One reusable bound for the waits of a request, instead of an ``asyncio.timeout`` per await.

``with deadline.bound(seconds): await ...`` raises ``TimeoutError`` when the await outlives
``seconds``, exactly as ``asyncio.timeout`` does (the task is cancelled, the cancellation
turned into ``TimeoutError`` and ``uncancel``-ed; anyone else's cancellation still
propagates). The difference is the cost of arming it: ``asyncio.timeout`` builds a
``Timeout`` object, a coroutine for its enter and exit, and a new loop timer for every
await, which a stream pays once per chunk. Here a wait only records when it must end; the
entry already due no later is kept, and when it comes due early it re-enters itself for the
wait then in progress (or does nothing if none is). So a stream of many chunks costs one
entry per idle period rather than one per chunk, and the phases of an upstream call
(headers, then body) share one.

The entries of every ``Deadline`` on a loop share that loop's one timer (``_Clock``): a loop
timer is dear (uvloop's ``call_at`` and ``cancel``: about 7,500 instructions, a libuv handle
opened and closed), and a request used to arm and drop two of them (its body, then the
upstream call) although its waits almost never run out. An entry is a small list in a heap;
the timer is armed for the earliest, and re-armed only when an earlier one comes in. An
entry given up (``close``) is marked dead and dropped when it reaches the top (or when dead
ones outnumber the live, so that a busy loop's heap stays the size of its waits).

``close`` gives the entry up: call it once the request's waits are over, so that nothing
of the request stays referenced for up to its whole timeout.
"""

from __future__ import annotations

import asyncio
import itertools
from heapq import heapify, heappop, heappush
from types import TracebackType
from typing import Any

__all__ = ["Deadline"]

# An entry: [when, sequence, its Deadline or None once given up]. A list, so that the heap
# compares entries in C; the sequence keeps two entries due at once from comparing
# Deadlines.
_Entry = list[Any]
# Dead entries are swept from the whole heap once they are this many and the majority.
_SWEEP_AT = 256
# Where a loop keeps its clock: on the loop itself, so that the clock lives and dies with
# it (a table keyed by loop would be kept alive by the clock's timer, which holds the loop).
_ATTRIBUTE = "_relay_deadline_clock"


class _Clock:
    """The one loop timer behind every ``Deadline`` of a loop."""

    __slots__ = ("_loop", "_heap", "_handle", "_armed_for", "_dead", "_sequence")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[_Entry] = []
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for = float("inf")
        self._dead = 0
        self._sequence = itertools.count()

    def add(self, when: float, deadline: Deadline) -> _Entry:
        entry: _Entry = [when, next(self._sequence), deadline]
        heappush(self._heap, entry)
        if when < self._armed_for:
            self._arm(when)
        return entry

    def give_up(self, entry: _Entry) -> None:
        """``entry`` will never be due: it only waits to be dropped."""
        entry[2] = None
        self._dead += 1
        if self._dead >= _SWEEP_AT and 2 * self._dead > len(self._heap):
            self._heap = [live for live in self._heap if live[2] is not None]
            heapify(self._heap)
            self._dead = 0

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_at(when, self._fire)
        self._armed_for = when

    def _fire(self) -> None:
        self._handle = None
        self._armed_for = float("inf")
        heap = self._heap
        now = self._loop.time()
        while heap:
            entry = heap[0]
            deadline: Deadline | None = entry[2]
            if deadline is None:
                heappop(heap)
                self._dead -= 1
            elif entry[0] <= now:
                heappop(heap)
                deadline._due()
            else:
                self._arm(entry[0])
                return


def _clock_of(loop: asyncio.AbstractEventLoop) -> _Clock:
    clock: _Clock | None = getattr(loop, _ATTRIBUTE, None)
    if clock is None:
        clock = _Clock(loop)
        try:
            setattr(loop, _ATTRIBUTE, clock)
        except AttributeError:  # a loop without attributes: each Deadline its own timer
            pass
    return clock


class Deadline:
    """The bound on the current wait of one task (one wait at a time)."""

    __slots__ = (
        "_loop",
        "_clock",
        "_given",
        "_task",
        "_entry",
        "_until",
        "_pending_s",
        "_cancelling",
        "_fired",
    )

    def __init__(self, task: asyncio.Task[Any] | None = None) -> None:
        """``task``: the one whose every wait this bounds, if the caller knows it already;
        else the task running at each wait (``current_task``, ~1,500 instructions on 3.11)."""
        self._loop = asyncio.get_running_loop()
        self._clock = _clock_of(self._loop)
        self._given = task
        self._task: asyncio.Task[Any] | None = None
        self._entry: _Entry | None = None  # in the clock's heap, due no later than _until
        self._until: float | None = None  # the end of the wait in progress; None: no wait
        self._pending_s = 0.0
        self._cancelling = 0
        self._fired = False

    def bound(self, seconds: float) -> Deadline:
        """The next ``with`` block may await for ``seconds`` at most."""
        self._pending_s = seconds
        return self

    def __enter__(self) -> Deadline:
        task = self._given or asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError("Deadline must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._fired = False
        until = self._loop.time() + self._pending_s
        self._until = until
        entry = self._entry
        if entry is None or entry[0] > until:
            if entry is not None:
                self._clock.give_up(entry)
            self._entry = self._clock.add(until, self)
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

    def _due(self) -> None:
        """Its entry came due (the clock has dropped it)."""
        self._entry = None
        until = self._until
        if until is None:  # between waits: the next wait enters its own
            return
        if self._loop.time() < until:  # entered for an earlier wait: wait for this one's end
            self._entry = self._clock.add(until, self)
            return
        task = self._task
        assert task is not None
        self._fired = True
        task.cancel()

    def close(self) -> None:
        """No more waits: give the entry up."""
        self._until = None
        entry = self._entry
        if entry is not None:
            self._clock.give_up(entry)
            self._entry = None
