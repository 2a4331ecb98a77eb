"""relay.process_memory: the GC and malloc settings ``relay serve`` runs with (held load)."""

from __future__ import annotations

import gc
import os
import platform
import subprocess
import sys
import weakref
from collections.abc import Iterator

import pytest

from relay.process_memory import (
    GC_THRESHOLDS,
    collector_paused,
    fix_mmap_threshold,
    limit_malloc_arenas,
    tune_gc,
)


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tune_gc_freezes_what_is_loaded_and_raises_the_thresholds(restored_gc: None) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    # Everything loaded so far (this test's modules included) is out of the collector's walk.
    assert gc.get_freeze_count() > 10_000
    assert all(gen == 0 for gen in gc.get_count()[1:])


def test_cycles_are_still_collected_after_tuning(restored_gc: None) -> None:
    tune_gc()

    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None

    collected: list[str] = []
    first, second = Node(), Node()
    first.other, second.other = second, first  # a cycle: reference counting cannot free it
    watch = weakref.ref(first, lambda _: collected.append("freed"))
    del first, second
    assert watch() is not None
    gc.collect(0)
    assert collected == ["freed"]


def test_the_collector_is_paused_while_the_server_loads_and_resumes_after() -> None:
    assert gc.isenabled()
    with pytest.raises(ImportError), collector_paused():
        assert not gc.isenabled()
        with collector_paused():  # nested: the outer pause decides when it ends
            pass
        assert not gc.isenabled()
        raise ImportError("a start-up failure")
    assert gc.isenabled()


# A child process: cap the arenas (or not), let six threads allocate at once, and count
# the heaps glibc's malloc_info reports.
_COUNT_ARENAS = """
import ctypes, sys, tempfile, threading
import gc
from relay.process_memory import GC_THRESHOLDS, limit_malloc_arenas, prepare_for_serving
if sys.argv[1] == "serve":  # what relay serve runs first: both settings
    prepare_for_serving()
    capped = gc.get_threshold() == GC_THRESHOLDS and gc.get_freeze_count() > 0
else:
    capped = limit_malloc_arenas(2) if sys.argv[1] == "cap" else False
start = threading.Barrier(6)
def allocate():
    start.wait()
    kept = [bytes(2000 + i % 7) for i in range(20000)]  # above pymalloc's 512 B: malloc
    start.wait()
threads = [threading.Thread(target=allocate) for _ in range(6)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.NamedTemporaryFile(suffix=".xml") as out:
    stream = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print(capped, open(out.name).read().count("<heap nr="))
"""


def _arenas_after_six_threads(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run(
        [sys.executable, "-c", _COUNT_ARENAS, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    capped, heaps = done.stdout.split()
    return capped, int(heaps)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="malloc arenas are glibc's",
)
def test_the_arena_cap_keeps_the_threads_to_two_heaps() -> None:
    assert _arenas_after_six_threads("cap") == ("True", 2)
    assert _arenas_after_six_threads("serve") == ("True", 2)
    # Without it each thread that allocates gets its own arena.
    capped, heaps = _arenas_after_six_threads("none")
    assert (capped, heaps > 2) == ("False", True)


def test_an_operators_malloc_arena_max_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False


# A child process: fix the mmap threshold (as relay serve does) or not, then allocate, touch
# and free a block of argon2's size twice (a key's hash, then its check), and print how
# many MB stayed resident.
_ARGON2_TWICE = """
import ctypes, sys
from relay.process_memory import prepare_for_serving
if sys.argv[1] == "serve":
    prepare_for_serving()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def rss_kb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
size = 19 << 20
before = rss_kb()
for _ in range(2):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
print((rss_kb() - before) // 1024)
"""


def _mb_kept_after_argon2_twice(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    done = subprocess.run(
        [sys.executable, "-c", _ARGON2_TWICE, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(done.stdout)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the mmap threshold is glibc's",
)
def test_a_freed_argon2_block_does_not_stay_resident() -> None:
    assert _mb_kept_after_argon2_twice("serve") <= 2
    # Without it glibc raises its threshold past the first block, and keeps the second.
    assert _mb_kept_after_argon2_twice("none") >= 15


def test_an_operators_mmap_threshold_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert fix_mmap_threshold() is False
