"""How the serving process holds memory: the cyclic GC's settings and malloc's arenas.

Both are set once by ``relay serve`` before the app starts (``prepare_for_serving``), and
both were measured under held load (1,000 requests in flight; docs/performance.md,
"Held load" and "Regression hunt of 2026-12-05").

- The cyclic GC: the start-up objects are frozen out of its walk, and young objects are
  collected 14x less often, so that 1,000 requests' live objects are not walked again and
  again. This is only cheap because a finished request leaves no cyclic garbage behind
  (relay.http.disconnect): what the collector must free waits longer, in larger batches.
- glibc's malloc gives each thread that allocates its own arena, up to eight per core,
  and an arena keeps what it once held. relay's threads (the SQLite writer and readers,
  the executor threads) each grew one. On a box whose cores other processes kept busy, held
  RSS after 10 s was 129-130 MB, against 116-120 MB with two arenas; on a quiet box both
  stay near 119 MB (fewer threads allocate at once). The threads allocate little and
  seldom at the same time (the event loop holds the GIL for most of a request), so sharing
  costs no measurable lock contention. An operator's own ``MALLOC_ARENA_MAX`` wins.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import sys
from collections.abc import Iterator

__all__ = [
    "GC_THRESHOLDS",
    "MALLOC_ARENAS",
    "collector_paused",
    "limit_malloc_arenas",
    "prepare_for_serving",
    "tune_gc",
]

# The cyclic GC's thresholds while serving (CPython's default is 700, 10, 10). With 1,000
# requests in flight every young collection finds their coroutines, frames and buffers
# alive and walks them again in each older generation: a held run spent ~1.8 s in the GC
# with pauses up to 270 ms (docs/performance.md, "Held load"). Collecting 14x less often
# lets most of a request's objects die by reference counting before any collection.
GC_THRESHOLDS = (10_000, 50, 100)
# Arenas for all threads together: the loop's thread keeps the main arena to itself.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def prepare_for_serving() -> None:
    """Once, before the app and its threads start."""
    limit_malloc_arenas()
    tune_gc()


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic collection while start-up loads the server's modules.

    Importing them allocates ~60,000 objects that all stay alive, and CPython's thresholds
    would walk them in ~90 collections for nothing (37 ms of a 0.31 s import,
    docs/performance.md "Start-up time and resident memory"); ``tune_gc`` collects once
    after, before freezing them.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def tune_gc() -> None:
    """Move what is loaded so far (modules, config, the libraries' tables) out of the
    collector's sight, and collect young objects less often.

    ``gc.freeze`` keeps the start-up objects out of every later full collection, which
    would otherwise walk them all each time; memory is still freed by reference counting,
    and cycles are still collected, only in larger batches.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas; True if the cap is now in force.

    Only a thread's first allocation picks its arena, so this must run before relay starts
    its threads. Nothing changes elsewhere than on glibc (mallopt missing or refusing), nor
    when the environment already sets ``MALLOC_ARENA_MAX``.
    """
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas) == 1)
