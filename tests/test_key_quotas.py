"""Per-upstream-key RPM/TPM quotas (``key_rpm``, ``key_tpm``) respected by routing."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from conftest import FakeUpstream, SeenRequest, make_config
from support_accounts import auth, chat_body, run_relay

from relay.upstream.keypool import KeyPool


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_routing_skips_a_key_without_rpm_left_until_it_refills() -> None:
    clock = Clock()
    pool = KeyPool("openai", ["a", "b"], clock=clock, key_rpm=2)
    taken = [pool.acquire() for _ in range(4)]
    assert sorted(k.index for k in taken if k is not None) == [1, 1, 2, 2]
    for key in taken:
        assert key is not None
        pool.release(key)
    assert pool.acquire() is None  # both keys spent their minute, though none is busy
    assert pool.seconds_until_ready() == pytest.approx(30.0)
    clock.now += 30.0  # one request's worth refilled on each key
    assert pool.acquire() is not None and pool.acquire() is not None
    assert pool.acquire() is None


def test_tpm_counts_the_estimated_tokens() -> None:
    clock = Clock()
    pool = KeyPool("openai", ["a", "b"], clock=clock, key_tpm=1000)
    first, second = pool.acquire(tokens=600), pool.acquire(tokens=600)
    assert first is not None and second is not None and first.index != second.index
    assert pool.acquire(tokens=600) is None
    assert pool.acquire(tokens=300) is not None  # a smaller request still fits
    assert pool.seconds_until_ready(tokens=600) == pytest.approx(12.0)  # 200 tokens at 1000/min


async def test_a_provider_over_its_key_quota_answers_503_with_retry_after(
    tmp_path: Path, admin_token: str
) -> None:
    def answer(seen: SeenRequest) -> httpx.Response:
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        return httpx.Response(200, json={"id": "x", "choices": [], "usage": usage})

    fake = FakeUpstream(answer)
    config = make_config(tmp_path, upstream_url="http://fake.test/v1", provider_extra="key_rpm = 2")
    async with run_relay(config, client_factory=fake.factory()) as relay:
        _, key = await relay.funded_key("acme")
        statuses = []
        for _ in range(3):
            response = await relay.client.post(
                "/v1/chat/completions", json=chat_body("fake-gpt"), headers=auth(key["secret"])
            )
            statuses.append(response.status_code)
        # Every key over its quota is like every key cooling after a 429: the client's 429
        # (issue 15's error mapping), with the time until a key has room again.
        assert statuses == [200, 200, 429]
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(response.headers["retry-after"]) >= 1
        assert len(fake.seen) == 2  # the upstream never saw a request over its quota
        assert relay.state.wallet.open_hold_count() == 0  # the refused one released its hold
