"""The alert outbox's pruning, one scenario for both engines (``test_alerts``,
``test_cluster_alerts``): sent rows past what the re-arm check reads go, in bounded batches,
run by the retention job; undelivered rows stay whatever their age."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from relay.alerts.outbox import PRUNE_AFTER_MIN_MS, AlertOutbox
from relay.alerts.outbox_store import OutboxStore
from relay.config import Config, parse_config
from relay.usage.retention import RetentionReport

HOUR_MS = 3_600_000
START_MS = 1_000_000_000_000


def prune_config(hook_url: str, rearm_s: int = 0) -> Config:
    """Cooling alerts to the local hook, re-armed at once (``rearm_s = 0``: one row per
    round per subject, the growth to bound); budget alerts to a port nothing listens on,
    so their row is never delivered."""
    return parse_config(
        f'[[alerts]]\nsink = "webhook"\nurl = "{hook_url}"\nevents = ["provider_cooling"]\n'
        f"rearm_s = {rearm_s}\n"
        '[[alerts]]\nsink = "webhook"\nurl = "http://127.0.0.1:9/never"\n'
        'events = ["budget_80"]\nrearm_s = 0\n'
    )


class BatchSpy:
    """Wraps a store's ``prune_sent`` to record each batch's size."""

    def __init__(self, store: OutboxStore) -> None:
        self.batches: list[int] = []
        self._prune = store.prune_sent
        store.prune_sent = self._counted  # type: ignore[method-assign]

    async def _counted(self, before_ms: int, limit: int) -> int:
        deleted = await self._prune(before_ms, limit)
        self.batches.append(deleted)
        return deleted


async def check_pruning(
    outbox: AlertOutbox,
    store: OutboxStore,
    clock: list[int],
    subjects: Callable[[], Awaitable[list[tuple[str, bool]]]],
    run_job: Callable[[Callable[[int], Awaitable[int]]], Awaitable[RetentionReport | None]],
) -> None:
    """``subjects()``: (subject, delivered) of every row, oldest first; ``run_job(prune)``:
    one pass of the engine's retention job with ``prune`` as its ``prune_outbox``."""
    assert outbox.raise_alert("budget_80", "key:k:0", "80% spent") == 1  # never delivered
    for _ in range(6):  # six watcher rounds an hour apart, each sent
        assert outbox.raise_alert("provider_cooling", "openai", "every key is cooling") == 1
        await outbox.deliver_due()
        clock[0] += HOUR_MS
    rows = await subjects()
    assert rows == [("key:k:0", False)] + [("openai", True)] * 6
    # A day past the third round: the first three are older than any re-arm needs.
    clock[0] = START_MS + 2 * HOUR_MS + PRUNE_AFTER_MIN_MS + 1
    spy = BatchSpy(store)
    report = await run_job(lambda now_ms: outbox.prune(now_ms, batch_rows=2))
    assert report is not None and report.alert_rows_deleted == 3
    assert spy.batches == [2, 1]  # bounded batches, until one comes back short
    assert await subjects() == [("key:k:0", False)] + [("openai", True)] * 3
    # Nothing more to prune; the re-arm check still sees the newest rows after a restart.
    assert (await run_job(outbox.prune)).alert_rows_deleted == 0  # type: ignore[union-attr]
    assert await store.last_raised()


async def check_horizon_follows_the_longest_rearm(store: Any, hook_url: str) -> None:
    """A day of history at least; a sink re-armed after longer keeps its rows that long."""
    now = START_MS
    short = AlertOutbox(store, lambda: prune_config(hook_url, rearm_s=60))
    long = AlertOutbox(store, lambda: prune_config(hook_url, rearm_s=3 * 86_400))
    try:
        assert short.prune_horizon_ms(now) == now - PRUNE_AFTER_MIN_MS
        assert long.prune_horizon_ms(now) == now - 3 * 86_400_000
    finally:
        await short.aclose()
        await long.aclose()
