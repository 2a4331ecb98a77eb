"""Optional active health checks of pool keys (``health_check_interval_s``)."""

from __future__ import annotations

from pathlib import Path

import httpx
from conftest import FakeUpstream, SeenRequest, make_config
from support_accounts import run_relay

from relay.upstream.health import HealthChecker


async def test_health_checks_disable_a_rejected_key_and_restore_a_fixed_one(
    tmp_path: Path, admin_token: str
) -> None:
    rejected = {"sk-b"}

    def answer(seen: SeenRequest) -> httpx.Response:
        assert seen.url.endswith("/v1/models")
        status = 401 if seen.key in rejected else 200
        return httpx.Response(status, json={"data": []})

    fake = FakeUpstream(answer)
    config = make_config(
        tmp_path,
        upstream_url="http://fake.test/v1",
        upstream_keys=("sk-a", "sk-b"),
        provider_extra="health_check_interval_s = 60",
    )
    async with run_relay(config, client_factory=fake.factory()) as relay:
        now = [0.0]
        checker = HealthChecker(lambda: relay.state.providers, clock=lambda: now[0])
        pool = relay.state.providers["fake"].pool
        assert await checker.check_due() == 2  # both keys of "fake"; the mock kind is skipped
        assert pool.keys[0].disabled_reason is None
        assert pool.keys[1].disabled_reason == "upstream answered 401"
        assert await checker.check_due() == 0  # not due again before the interval
        rejected.clear()  # the key was fixed upstream
        now[0] += 60
        assert await checker.check_due() == 2
        assert pool.keys[1].disabled_reason is None
        # The operator's decision is not overridden by a healthy probe.
        pool.keys[0].disabled_reason = "disabled by the operator"
        probes_of_a = [seen.key for seen in fake.seen].count("sk-a")
        now[0] += 60
        assert await checker.check_due() == 2
        assert pool.keys[0].disabled_reason == "disabled by the operator"
        assert [seen.key for seen in fake.seen].count("sk-a") == probes_of_a  # not even probed
