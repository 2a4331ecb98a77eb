"""``GET /metrics``: Prometheus text from the app's own registry, behind a token."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from conftest import make_config
from prometheus_client.parser import text_string_to_metric_families
from support_accounts import Relay, auth, chat_body, run_relay

from relay.http.admin_throttle import MAX_FAILURES
from relay.metrics.instruments import RequestMetrics
from relay.usage.log import UsageRecord

METRICS_TOKEN = "scrape-me"


@pytest.fixture
async def relay(
    tmp_path: Path, admin_token: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Relay]:
    monkeypatch.setenv("RELAY_METRICS_TOKEN", METRICS_TOKEN)
    async with run_relay(make_config(tmp_path)) as running:
        yield running


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found[(name, frozenset(labels.items()))]


async def test_metrics_count_requests_tokens_cost_and_errors(relay: Relay) -> None:
    account, key = await relay.funded_key("acme")
    for _ in range(3):
        ok = await relay.client.post(
            "/v1/chat/completions", json=chat_body(), headers=auth(key["secret"])
        )
        assert ok.status_code == 200
    unknown = await relay.client.post(
        "/v1/chat/completions", json=chat_body("nope"), headers=auth(key["secret"])
    )
    assert unknown.status_code == 404
    anonymous = await relay.client.post(
        "/v1/chat/completions", json=chat_body(), headers={"authorization": "Bearer rk_bad"}
    )
    assert anonymous.status_code == 401

    response = await relay.client.get("/metrics")  # the admin token
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    assert (
        value(
            found,
            "relay_requests_total",
            endpoint="chat",
            model="mock-gpt",
            provider="mock",
            status="200",
        )
        == 3
    )
    assert (
        value(found, "relay_errors_total", endpoint="chat", model="none", code="model_not_found")
        == 1
    )
    assert (
        value(found, "relay_errors_total", endpoint="chat", model="none", code="invalid_api_key")
        == 1
    )
    assert (
        value(found, "relay_request_duration_seconds_count", model="mock-gpt", provider="mock") == 3
    )
    assert (
        value(found, "relay_time_to_first_byte_seconds_count", model="mock-gpt", provider="mock")
        == 3
    )
    charged = -sum(row["amount_micros"] for row in await relay.charges(account["id"]))
    assert charged > 0
    assert value(found, "relay_cost_micros_total", model="mock-gpt", provider="mock") == charged
    assert value(found, "relay_tokens_total", model="mock-gpt", provider="mock", kind="prompt") > 0
    # Scrape-time gauges from the in-memory state.
    assert value(found, "relay_in_flight_requests") == 0
    assert value(found, "relay_holds_micros") == 0
    assert value(found, "relay_wallet_balance_micros") == 100_000_000 - charged
    assert value(found, "relay_db_write_backlog") >= 0
    assert value(found, "relay_db_commits_total") > 0
    assert value(found, "relay_db_commit_duration_seconds_count") > 0


async def test_metrics_need_the_admin_or_the_metrics_token(relay: Relay) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as client:
        assert (await client.get("/metrics")).status_code == 401
        bad = await client.get("/metrics", headers=auth("wrong"))
        assert bad.status_code == 401
        good = await client.get("/metrics", headers=auth(METRICS_TOKEN))
        assert good.status_code == 200
        assert "relay_requests_total" in good.text or "relay_in_flight_requests" in good.text
        # A scraper is not guessing the admin token: more scrapes than the admin-token
        # throttle allows guesses (relay.http.admin_throttle) are all answered.
        for _ in range(MAX_FAILURES + 2):
            scrape = await client.get("/metrics", headers=auth(METRICS_TOKEN))
            assert scrape.status_code == 200, scrape.text


async def test_upstream_key_health_is_labelled_by_position(
    tmp_path: Path, admin_token: str
) -> None:
    config = make_config(
        tmp_path, upstream_url="http://127.0.0.1:9", upstream_keys=("sk-secret-1", "sk-secret-2")
    )
    async with run_relay(config) as relay:
        relay.state.providers["fake"].pool.keys[1].disabled_reason = "upstream answered 401"
        text = (await relay.client.get("/metrics")).text
    assert "sk-secret" not in text
    found = samples(text)
    assert value(found, "relay_upstream_key_disabled", provider="fake", key="#2") == 1
    assert value(found, "relay_upstream_key_usable", provider="fake", key="#1") == 1
    assert value(found, "relay_upstream_key_usable", provider="fake", key="#2") == 0


def test_two_apps_keep_separate_registries() -> None:
    first, second = RequestMetrics(), RequestMetrics()
    first.observe(UsageRecord("r1", 0, "chat", 200, model="m", provider="p", latency_ms=5))
    assert (
        first.registry.get_sample_value(
            "relay_requests_total",
            {"endpoint": "chat", "model": "m", "provider": "p", "status": "200"},
        )
        == 1
    )
    assert (
        second.registry.get_sample_value(
            "relay_requests_total",
            {"endpoint": "chat", "model": "m", "provider": "p", "status": "200"},
        )
        is None
    )


def test_observing_a_request_costs_microseconds() -> None:
    """The hot-path price of metrics: one observe per finished request (README figure)."""
    metrics = RequestMetrics()
    record = UsageRecord(
        "r1",
        0,
        "chat",
        200,
        model="m",
        provider="p",
        prompt_tokens=12,
        completion_tokens=30,
        cost_micros=25,
        latency_ms=120,
        ttfb_ms=40,
    )
    n = 20_000
    started = time.perf_counter()
    for _ in range(n):
        metrics.observe(record)
    per_call_us = (time.perf_counter() - started) / n * 1e6
    assert (
        metrics.registry.get_sample_value(
            "relay_requests_total",
            {"endpoint": "chat", "model": "m", "provider": "p", "status": "200"},
        )
        == n
    )
    assert per_call_us < 50, per_call_us  # generous for a loaded 2-core box; ~5 µs measured


async def test_the_open_listener_serves_only_metrics(relay: Relay) -> None:
    from relay.metrics.listener import MetricsOnlyApp, StateTap

    tap = StateTap(lambda scope, receive, send: None)  # type: ignore[arg-type,return-value]
    tap.state = {"relay": relay.state}
    transport = httpx.ASGITransport(app=MetricsOnlyApp(tap))
    async with httpx.AsyncClient(transport=transport, base_url="http://metrics") as client:
        open_scrape = await client.get("/metrics")  # no token on this port
        assert open_scrape.status_code == 200
        assert "relay_in_flight_requests" in open_scrape.text
        assert (await client.get("/v1/models")).status_code == 404
        assert (await client.post("/metrics")).status_code == 404
