"""relay.server.tune_gc: the collector settings ``relay serve`` runs with (held load)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from relay.server import GC_THRESHOLDS, tune_gc


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
