"""The per-request instruments: plain integers on the hot path, Prometheus families at scrape.

``RequestMetrics.observe`` runs once per finished request, on the event loop, from the
usage record the request leaves anyway, so it must stay cheap. prometheus_client's own
``Counter``/``Histogram`` take a lock per increment (~1-2 µs each; a request touches eight
of them), so relay keeps one small ``_Series`` of integers per (endpoint, model, provider,
status, code) instead and turns them into the library's metric families only when
Prometheus scrapes (``collect``). The exposition itself is prometheus_client's.

Label values come from the config (model and provider names) and from relay's own closed
sets (endpoints, status codes, error codes), never from the request, so a client cannot
grow the series without bound. Each app owns its ``CollectorRegistry`` (tests run many).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from relay.usage.log import UsageRecord

__all__ = ["COMMIT_BUCKETS_S", "LATENCY_BUCKETS_S", "RequestMetrics"]

# From a cached embedding (~10 ms) to a long reasoning answer (minutes).
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Histogram bounds in whole milliseconds, the unit of usage records (exact comparisons).
_LATENCY_BOUNDS_MS = tuple(round(b * 1000) for b in LATENCY_BUCKETS_S)
COMMIT_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
_NONE = "none"

SeriesKey = tuple[str, str, str, int, str | None]


class _Histogram:
    """Per-bucket counts (not cumulative) and the sum, in the bounds' unit."""

    __slots__ = ("counts", "total")

    def __init__(self, size: int) -> None:
        self.counts = [0] * (size + 1)  # the last one is +Inf
        self.total = 0.0

    def merge(self, other: _Histogram) -> None:
        for i, count in enumerate(other.counts):
            self.counts[i] += count
        self.total += other.total


class _Series:
    __slots__ = ("requests", "latency", "ttfb", "prompt", "completion", "cached", "cost")

    def __init__(self) -> None:
        self.requests = 0
        self.latency = _Histogram(len(_LATENCY_BOUNDS_MS))
        self.ttfb = _Histogram(len(_LATENCY_BOUNDS_MS))
        self.prompt = 0
        self.completion = 0
        self.cached = 0
        self.cost = 0


class RequestMetrics(Collector):
    """Request counters and histograms; registered on ``self.registry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._series: dict[SeriesKey, _Series] = {}
        self._commits = _Histogram(len(COMMIT_BUCKETS_S))
        self.registry.register(self)

    def observe(self, record: UsageRecord) -> None:
        """Count one finished request (called with its usage record); a few integer adds."""
        key = (
            record.endpoint,
            record.model or _NONE,
            record.provider or _NONE,
            record.status,
            record.error_code,
        )
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series()
        series.requests += 1
        latency = record.latency_ms
        if latency is not None:
            series.latency.counts[bisect_left(_LATENCY_BOUNDS_MS, latency)] += 1
            series.latency.total += latency
        ttfb = record.ttfb_ms
        if ttfb is not None:
            series.ttfb.counts[bisect_left(_LATENCY_BOUNDS_MS, ttfb)] += 1
            series.ttfb.total += ttfb
        series.prompt += record.prompt_tokens
        series.completion += record.completion_tokens
        series.cached += record.cached_tokens
        series.cost += record.cost_micros

    def observe_commit(self, seconds: float) -> None:
        """One batch committed by the writer (off the request path)."""
        self._commits.counts[bisect_left(COMMIT_BUCKETS_S, seconds)] += 1
        self._commits.total += seconds

    # -- scrape time ----------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "relay_requests",
            "Finished requests by endpoint, model, provider and HTTP status.",
            labels=["endpoint", "model", "provider", "status"],
        )
        errors: dict[tuple[str, str, str], int] = defaultdict(int)
        per_route: dict[tuple[str, str], list[_Series]] = defaultdict(list)
        for (endpoint, model, provider, status, code), series in list(self._series.items()):
            requests.add_metric([endpoint, model, provider, str(status)], series.requests)
            if status >= 400:
                errors[(endpoint, model, code or str(status))] += series.requests
            per_route[(model, provider)].append(series)
        yield requests
        error_family = CounterMetricFamily(
            "relay_errors",
            "Refused or failed requests by error code.",
            labels=["endpoint", "model", "code"],
        )
        for labels, count in errors.items():
            error_family.add_metric(list(labels), count)
        yield error_family
        yield from _per_route_families(per_route)
        commits = HistogramMetricFamily(
            "relay_db_commit_duration_seconds", "Time the single writer took to commit one batch."
        )
        commits.add_metric([], _buckets(self._commits, COMMIT_BUCKETS_S), self._commits.total)
        yield commits


def _buckets(histogram: _Histogram, bounds: Iterable[float]) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs in Prometheus' form, ending with +Inf."""
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(bounds, histogram.counts, strict=False):
        running += count
        out.append((str(bound), running))
    out.append(("+Inf", running + histogram.counts[-1]))
    return out


def _per_route_families(per_route: dict[tuple[str, str], list[_Series]]) -> Iterator[Metric]:
    labels = ["model", "provider"]
    latency = HistogramMetricFamily(
        "relay_request_duration_seconds",
        "Time from the request's arrival to its last byte.",
        labels=labels,
    )
    ttfb = HistogramMetricFamily(
        "relay_time_to_first_byte_seconds",
        "Time from the request's arrival to the upstream's first byte.",
        labels=labels,
    )
    tokens = CounterMetricFamily(
        "relay_tokens", "Tokens billed, by kind (prompt includes cached).", labels=[*labels, "kind"]
    )
    cost = CounterMetricFamily("relay_cost_micros", "Micro-USD charged to accounts.", labels=labels)
    for (model, provider), group in per_route.items():
        lat, first = _Histogram(len(_LATENCY_BOUNDS_MS)), _Histogram(len(_LATENCY_BOUNDS_MS))
        prompt = completion = cached = micros = 0
        for series in group:
            lat.merge(series.latency)
            first.merge(series.ttfb)
            prompt += series.prompt
            completion += series.completion
            cached += series.cached
            micros += series.cost
        latency.add_metric([model, provider], _buckets(lat, LATENCY_BUCKETS_S), lat.total / 1000)
        ttfb.add_metric([model, provider], _buckets(first, LATENCY_BUCKETS_S), first.total / 1000)
        tokens.add_metric([model, provider, "prompt"], prompt)
        tokens.add_metric([model, provider, "completion"], completion)
        tokens.add_metric([model, provider, "cached"], cached)
        cost.add_metric([model, provider], micros)
    yield from (latency, ttfb, tokens, cost)
