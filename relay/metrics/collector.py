"""Gauges read from relay's in-memory state when Prometheus scrapes, not on the hot path.

In-flight requests, holds, wallet totals, upstream key health and the writer's backlog
already live in memory; a custom collector reads them at scrape time, so keeping them
current costs a request nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from relay.state import RelayState

__all__ = ["StateCollector"]


class StateCollector(Collector):
    def __init__(self, state: RelayState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        state = self._state
        yield GaugeMetricFamily(
            "relay_in_flight_requests",
            "Billable requests admitted and not yet settled (open wallet holds).",
            value=state.wallet.open_hold_count(),
        )
        balance, held, accounts = state.wallet.totals()
        yield GaugeMetricFamily(
            "relay_holds_micros", "Micro-USD held by requests in flight.", value=held
        )
        yield GaugeMetricFamily(
            "relay_wallet_balance_micros", "Sum of every account's balance.", value=balance
        )
        yield GaugeMetricFamily("relay_accounts", "Accounts loaded in the wallet.", value=accounts)
        yield from _key_health(state)
        yield GaugeMetricFamily(
            "relay_db_write_backlog",
            "Writes queued for the single writer, not yet committed.",
            value=state.db.pending_writes,
        )
        yield CounterMetricFamily(
            "relay_db_commits", "Batches the writer committed.", value=state.db.commits
        )
        yield GaugeMetricFamily(
            "relay_start_time_seconds", "When this process started serving.", value=state.started_at
        )


def _key_health(state: RelayState) -> Iterator[Metric]:
    labels = ["provider", "key"]
    in_flight = GaugeMetricFamily(
        "relay_upstream_key_in_flight", "Requests in flight on each upstream key.", labels=labels
    )
    usable = GaugeMetricFamily(
        "relay_upstream_key_usable",
        "1 if the upstream key can take a request now, 0 if cooling down or disabled.",
        labels=labels,
    )
    disabled = GaugeMetricFamily(
        "relay_upstream_key_disabled",
        "1 if the key left the rotation (the upstream rejected it, or an operator disabled it).",
        labels=labels,
    )
    now = time.monotonic()
    for name, provider in state.providers.items():
        for key in provider.pool.keys:
            # By position, never by value: the secret must not reach a label.
            label = [name, f"#{key.index}"]
            in_flight.add_metric(label, key.in_flight)
            is_disabled = key.disabled_reason is not None
            usable.add_metric(label, 0 if is_disabled or key.cooldown_until > now else 1)
            disabled.add_metric(label, 1 if is_disabled else 0)
    yield in_flight
    yield usable
    yield disabled
