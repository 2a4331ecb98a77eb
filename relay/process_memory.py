"""How the serving process holds memory: the cyclic GC's settings and glibc malloc's.

All are set once by ``relay serve`` before the app starts (``prepare_for_serving``), and
were measured under held load (1,000 requests in flight; docs/performance.md,
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
- glibc's mmap threshold: blocks of at least this size are mapped on their own and returned to
  the system when freed. glibc starts it at 128 KiB but raises it to the size of any such
  block freed, up to 32 MiB; after the first argon2 hash (19 MiB, relay.identity.keys) the
  next one (the first request's key check) came from an arena and stayed: +18.7 MB RSS from
  the first request on. A fixed threshold keeps such blocks mapped on their own. An
  operator's own ``MALLOC_MMAP_THRESHOLD_`` wins.
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
    "MMAP_THRESHOLD_BYTES",
    "collector_paused",
    "fix_mmap_threshold",
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
# Larger blocks are mapped on their own: argon2's 19 MiB, not a request's buffers.
MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters (malloc.h)
_M_ARENA_MAX = -8


def prepare_for_serving() -> None:
    """Once, before the app and its threads start."""
    limit_malloc_arenas()
    fix_mmap_threshold()
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
    return _mallopt(_M_ARENA_MAX, arenas, unless_env="MALLOC_ARENA_MAX")


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold (no more raising it); True if it is now in force.

    Nothing changes elsewhere than on glibc, nor when the environment already sets
    ``MALLOC_MMAP_THRESHOLD_``.
    """
    return _mallopt(_M_MMAP_THRESHOLD, threshold, unless_env="MALLOC_MMAP_THRESHOLD_")


def _mallopt(parameter: int, value: int, *, unless_env: str) -> bool:
    if not sys.platform.startswith("linux") or unless_env in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(parameter, value) == 1)
